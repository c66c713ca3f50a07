//! Which VM gets the keyboard, and the hypervisor's console commands:
//! Ctrl-] then a digit switches the input to that VM (if it exists);
//! Ctrl-] then a command letter (see [`HELP`]) asks the hypervisor to list
//! the VMs or to restart, stop or start the focused one; everything else
//! goes to the focused VM. Output needs no multiplexing here: each VM's
//! lines carry its name. (Not Ctrl-A: QEMU's `-nographic` console keeps
//! that one for itself.)

/// Ctrl-].
const ESCAPE: u8 = 0x1d;

/// A guest's console line as the hypervisor prints it after the VM's
/// name: every control character (C0 and C1, tab excepted) and every
/// bidirectional formatting character shown as `\u{..}`, so that no guest
/// can move the cursor, erase or reorder what is on the terminal and make
/// its text pass for another VM's or the hypervisor's line (`[hyp] ...`
/// after a carriage return or an escape sequence). Bytes that are not
/// UTF-8 are shown as U+FFFD.
pub struct Printable<'a>(pub &'a [u8]);

impl core::fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        use core::fmt::Write;
        for chunk in self.0.utf8_chunks() {
            for c in chunk.valid().chars() {
                let bidi = matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
                if (c.is_control() && c != '\t') || bidi {
                    write!(f, "\\u{{{:x}}}", u32::from(c))?;
                } else {
                    f.write_char(c)?;
                }
            }
            if !chunk.invalid().is_empty() {
                f.write_char(char::REPLACEMENT_CHARACTER)?;
            }
        }
        Ok(())
    }
}

/// The help line of the console commands.
pub const HELP: &str = "Ctrl-] then: a digit sends the input to that VM; l lists the VMs; \
r restarts, s stops, b boots (starts again) the VM the input goes to; h this help; \
Ctrl-] sends one Ctrl-] to the VM";

/// A console command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// `h` (or `?`): the help line.
    Help,
    /// `l`: one line per VM.
    List,
    /// `r`: restart VM `n`.
    Restart(usize),
    /// `s`: stop VM `n`.
    Stop(usize),
    /// `b`: boot stopped VM `n` again.
    Start(usize),
    /// Any other byte after Ctrl-].
    Unknown(u8),
}

/// What to do with one byte of console input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// Give `byte` to VM `vm`.
    Deliver {
        /// Index of the VM.
        vm: usize,
        /// The byte.
        byte: u8,
    },
    /// Input now goes to VM `vm`.
    Switched(usize),
    /// Part of an escape sequence: nothing to deliver.
    Swallowed,
    /// A command for the hypervisor.
    Command(Command),
}

/// The input multiplexer.
#[derive(Debug, Default)]
pub struct ConsoleMux {
    focus: usize,
    escaped: bool,
}

impl ConsoleMux {
    /// Input to VM 0, no escape pending.
    pub const fn new() -> Self {
        Self {
            focus: 0,
            escaped: false,
        }
    }

    /// Handles one byte with `vms` VMs running.
    pub fn feed(&mut self, byte: u8, vms: usize) -> Input {
        if core::mem::take(&mut self.escaped) {
            if let Some(d) = (byte as char).to_digit(10) {
                if (d as usize) < vms {
                    self.focus = d as usize;
                    return Input::Switched(self.focus);
                }
                return Input::Swallowed;
            }
            if byte != ESCAPE {
                return Input::Command(match byte {
                    b'h' | b'?' => Command::Help,
                    b'l' => Command::List,
                    b'r' => Command::Restart(self.focus),
                    b's' => Command::Stop(self.focus),
                    b'b' => Command::Start(self.focus),
                    other => Command::Unknown(other),
                });
            }
            // Ctrl-] Ctrl-] sends one Ctrl-] to the guest.
            return Input::Deliver {
                vm: self.focus,
                byte: ESCAPE,
            };
        }
        if byte == ESCAPE {
            self.escaped = true;
            return Input::Swallowed;
        }
        Input::Deliver {
            vm: self.focus,
            byte,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_goes_to_vm0_until_switched() {
        let mut m = ConsoleMux::default();
        assert_eq!(m.feed(b'a', 2), Input::Deliver { vm: 0, byte: b'a' });
        assert_eq!(m.feed(ESCAPE, 2), Input::Swallowed);
        assert_eq!(m.feed(b'1', 2), Input::Switched(1));
        assert_eq!(m.feed(b'b', 2), Input::Deliver { vm: 1, byte: b'b' });
    }

    #[test]
    fn switching_to_a_missing_vm_keeps_the_focus() {
        let mut m = ConsoleMux::default();
        m.feed(ESCAPE, 2);
        assert_eq!(m.feed(b'7', 2), Input::Swallowed);
        assert_eq!(m.feed(b'x', 2), Input::Deliver { vm: 0, byte: b'x' });
    }

    #[test]
    fn commands_act_on_the_focused_vm() {
        let mut m = ConsoleMux::default();
        let mut after_escape = |byte| {
            m.feed(ESCAPE, 3);
            m.feed(byte, 3)
        };
        assert_eq!(after_escape(b'h'), Input::Command(Command::Help));
        assert_eq!(after_escape(b'?'), Input::Command(Command::Help));
        assert_eq!(after_escape(b'l'), Input::Command(Command::List));
        assert_eq!(after_escape(b'r'), Input::Command(Command::Restart(0)));
        assert_eq!(after_escape(b'2'), Input::Switched(2));
        assert_eq!(after_escape(b's'), Input::Command(Command::Stop(2)));
        assert_eq!(after_escape(b'b'), Input::Command(Command::Start(2)));
        assert_eq!(after_escape(b'q'), Input::Command(Command::Unknown(b'q')));
        // The letters alone are the guest's.
        assert_eq!(m.feed(b'r', 3), Input::Deliver { vm: 2, byte: b'r' });
    }

    #[test]
    fn double_escape_sends_one_escape() {
        let mut m = ConsoleMux::default();
        m.feed(ESCAPE, 1);
        assert_eq!(
            m.feed(ESCAPE, 1),
            Input::Deliver {
                vm: 0,
                byte: ESCAPE
            }
        );
        assert_eq!(m.feed(b'q', 1), Input::Deliver { vm: 0, byte: b'q' });
    }

    #[test]
    fn a_guest_line_cannot_move_the_cursor_or_pass_for_another() {
        let shown = |b: &[u8]| alloc::format!("{}", Printable(b));
        assert_eq!(shown(b"plain text\tand a tab"), "plain text\tand a tab");
        // An escape sequence that erases the line and goes back to its
        // start, then a forged hypervisor line.
        assert_eq!(
            shown(b"\x1b[2K\x1b[1G[hyp] VM victim: powered off"),
            "\\u{1b}[2K\\u{1b}[1G[hyp] VM victim: powered off"
        );
        assert_eq!(
            shown(b"\x08\x08\x7f\x0b\x0c"),
            "\\u{8}\\u{8}\\u{7f}\\u{b}\\u{c}"
        );
        // C1 controls (CSI as U+009B) and right-to-left overrides.
        assert_eq!(
            shown("\u{9b}2K \u{202e}olleh".as_bytes()),
            "\\u{9b}2K \\u{202e}olleh"
        );
        // Not UTF-8: shown, not dropped, and the rest kept.
        assert_eq!(shown(b"a\xffb"), "a\u{fffd}b");
        assert_eq!(shown("ünïcode ✓".as_bytes()), "ünïcode ✓");
    }
}
