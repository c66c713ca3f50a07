//! Guest command translation (IHI 0070 chapter 4): what each command a guest
//! writes into its virtual command queue becomes on the physical SMMU.
//!
//! The register emulation decodes each guest entry with
//! [`Command::decode`] and hands it to [`translate`]. The rules (docs/ARCHITECTURE.md,
//! "SMMU rules that are easy to get wrong"):
//! - stage 1 TLB invalidations are forwarded with the VM's VMID, their
//!   address ranges kept exactly (never widened to a full flush);
//! - configuration invalidations of STEs make the caller re-read,
//!   re-validate and reinstall the guest's STEs ([`Translated::ReinstallStes`]);
//! - CD and ATC invalidations are forwarded with the virtual StreamID
//!   replaced by the physical one;
//! - CMD_SYNC completes only after a physical CMD_SYNC;
//! - stage 2, EL2 and unadvertised commands are CERROR_ILL, as on an SMMU
//!   that does not implement them, and never reach the physical queue.
//!
//! Nothing [`translate`] returns can name another VMID or a StreamID that is
//! not one of the VM's devices.

use super::{StreamMap, StreamRange, VsmmuPolicy};
use crate::addr::{StreamId, Vmid};
use crate::cmd::{CmdError, Command, Sync, TlbiScope};

/// What a guest command becomes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Translated {
    /// Issue this command on the physical queue: each guest command
    /// becomes at most one physical command.
    Forward(Command),
    /// Re-read, validate and install the guest STEs of these virtual
    /// StreamIDs, then issue CMD_CFGI_STE for their physical StreamIDs.
    ReinstallStes(StreamRange),
    /// CMD_SYNC: issue a physical CMD_SYNC and complete the guest's (with
    /// the completion signal it asks for, §4.7.3) only after it completed.
    Sync(Sync),
    /// Nothing to do (a prefetch hint, or an invalidation for a StreamID
    /// with none of the VM's devices behind it).
    Drop,
}

/// Translates one decoded guest command for the VM with VMID `vmid` and
/// devices `map`.
///
/// - CMD_TLBI_NH_ALL/ASID/VA/VAA (§4.4.2): the same command with `vmid`;
///   the guest's VMID field is replaced (a stage-1-only SMMU ignores it).
/// - CMD_TLBI_NSNH_ALL (§4.4.4): CMD_TLBI_NH_ALL for `vmid` only.
/// - CMD_CFGI_STE, CMD_CFGI_STE_RANGE, CMD_CFGI_ALL (§4.3.1, §4.3.2,
///   §4.3.6): [`Translated::ReinstallStes`] of the virtual StreamIDs.
/// - CMD_CFGI_CD, CMD_CFGI_CD_ALL (§4.3.3, §4.3.4), CMD_ATC_INV (§4.5.1):
///   the same command for the physical StreamID; [`Translated::Drop`] for a
///   StreamID the VM has no device at.
/// - CMD_SYNC (§4.7.3): [`Translated::Sync`].
/// - CMD_PREFETCH_* (§4.2): [`Translated::Drop`] (hints only).
/// - CMD_TLBI_EL2_* (no Hyp advertised), CMD_TLBI_S12_VMALL and
///   CMD_TLBI_S2_IPA (no stage 2 advertised), CMD_PRI_RESP (no PRI),
///   CMD_RESUME and CMD_STALL_TERM (no stall): [`CmdError::UnknownOpcode`],
///   i.e. CERROR_ILL (§4.1.3), as an SMMU without those features reports.
///
/// This does not check the optional features the guest's command may use
/// (range invalidation, SubstreamID width, ATS): use
/// [`translate_checked`] with the advertised [`VsmmuPolicy`] for that.
pub fn translate(cmd: &Command, vmid: Vmid, map: &dyn StreamMap) -> Result<Translated, CmdError> {
    let forward = |c: Command| Ok(Translated::Forward(c));
    let physical = |sid: StreamId| map.physical(sid);
    match *cmd {
        Command::TlbiNhAll { .. } | Command::TlbiNsnhAll => forward(Command::TlbiNhAll { vmid }),
        Command::TlbiNhAsid { asid, .. } => forward(Command::TlbiNhAsid { vmid, asid }),
        Command::TlbiNhVa {
            asid, addr, scope, ..
        } => forward(Command::TlbiNhVa {
            vmid,
            asid,
            addr,
            scope,
        }),
        Command::TlbiNhVaa { addr, scope, .. } => forward(Command::TlbiNhVaa { vmid, addr, scope }),
        Command::CfgiSte { sid, .. } => Ok(Translated::ReinstallStes(StreamRange::One(sid))),
        Command::CfgiSteRange { sid, range } => {
            // 2^(Range+1) StreamIDs, aligned (§4.3.2).
            let log2 = range.saturating_add(1);
            let base = if log2 >= 32 {
                StreamId(0)
            } else {
                StreamId(sid.0 & !((1u32 << log2) - 1))
            };
            Ok(Translated::ReinstallStes(if log2 >= 32 {
                StreamRange::All
            } else {
                StreamRange::Range { base, log2 }
            }))
        }
        Command::CfgiAll => Ok(Translated::ReinstallStes(StreamRange::All)),
        Command::CfgiCd { sid, ssid, leaf } => Ok(match physical(sid) {
            Some(sid) => Translated::Forward(Command::CfgiCd { sid, ssid, leaf }),
            None => Translated::Drop,
        }),
        Command::CfgiCdAll { sid } => Ok(match physical(sid) {
            Some(sid) => Translated::Forward(Command::CfgiCdAll { sid }),
            None => Translated::Drop,
        }),
        Command::AtcInv {
            sid,
            ssid,
            global,
            addr,
            size,
        } => Ok(match physical(sid) {
            Some(sid) => Translated::Forward(Command::AtcInv {
                sid,
                ssid,
                global,
                addr,
                size,
            }),
            None => Translated::Drop,
        }),
        Command::Sync(sync) => Ok(Translated::Sync(sync)),
        Command::PrefetchConfig { .. } | Command::PrefetchAddr { .. } => Ok(Translated::Drop),
        Command::TlbiEl2All
        | Command::TlbiEl2Asid { .. }
        | Command::TlbiEl2Va { .. }
        | Command::TlbiEl2Vaa { .. }
        | Command::TlbiS12Vmall { .. }
        | Command::TlbiS2Ipa { .. }
        | Command::PriResp { .. }
        | Command::Resume { .. }
        | Command::StallTerm { .. } => Err(CmdError::UnknownOpcode(cmd.opcode())),
    }
}

/// [`translate`], after checking the command against what the vSMMU
/// advertises, as an SMMU with exactly those features would (§4.1.5: a
/// field an SMMU does not implement is RES0 and may be rejected):
///
/// - TG/TTL/NUM/SCALE without SMMU_IDR3.RIL (§4.4.1.1): CERROR_ILL, since
///   forwarding them to a physical SMMU without RIL could stop the
///   physical queue, and dropping them would widen or miss the range;
/// - a 16-bit ASID without SMMU_IDR0.ASID16: CERROR_ILL;
/// - a SubstreamID at or above 2^SSIDSIZE in CMD_CFGI_CD or CMD_ATC_INV:
///   CERROR_ILL;
/// - CMD_ATC_INV: ATS is never advertised, CERROR_ILL.
pub fn translate_checked(
    cmd: &Command,
    vmid: Vmid,
    map: &dyn StreamMap,
    policy: &VsmmuPolicy,
) -> Result<Translated, CmdError> {
    let op = cmd.opcode();
    let illegal = |field: &'static str| CmdError::IllegalField { opcode: op, field };
    let check_scope = |scope: &TlbiScope| {
        if scope.range.is_some() && !policy.ril {
            Err(illegal("TG (range invalidation not implemented)"))
        } else {
            Ok(())
        }
    };
    let check_asid = |asid: crate::addr::Asid| {
        if !policy.asid16 && asid.0 > 0xff {
            Err(illegal("ASID (16-bit ASIDs not implemented)"))
        } else {
            Ok(())
        }
    };
    match cmd {
        Command::TlbiNhAsid { asid, .. } => check_asid(*asid)?,
        Command::TlbiNhVa { asid, scope, .. } => {
            check_asid(*asid)?;
            check_scope(scope)?;
        }
        Command::TlbiNhVaa { scope, .. } => check_scope(scope)?,
        Command::CfgiCd { ssid, .. } => {
            if policy.ssid_bits < 32 && ssid.0 >> policy.ssid_bits != 0 {
                return Err(illegal("SubstreamID (beyond SSIDSIZE)"));
            }
        }
        Command::AtcInv { .. } => return Err(CmdError::UnknownOpcode(op)),
        _ => {}
    }
    translate(cmd, vmid, map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::{Asid, Iova, Ipa, Ssid};
    use crate::cmd::{Granule, Sync, TlbiRange};
    use alloc::collections::BTreeMap;
    use alloc::vec;
    use proptest::prelude::*;

    const VM: Vmid = Vmid(7);

    /// vSID -> pSID.
    struct Map(BTreeMap<u32, u32>);

    impl StreamMap for Map {
        fn physical(&self, vsid: StreamId) -> Option<StreamId> {
            self.0.get(&vsid.0).copied().map(StreamId)
        }
    }

    fn map() -> Map {
        Map([(0x8, 0x108), (0x10, 0x2010)].into_iter().collect())
    }

    fn range_scope() -> TlbiScope {
        TlbiScope {
            leaf: true,
            range: Some(TlbiRange {
                tg: Granule::Size4K,
                ttl: 3,
                scale: 2,
                num: 9,
            }),
        }
    }

    fn fwd(t: Result<Translated, CmdError>) -> Command {
        match t {
            Ok(Translated::Forward(c)) => c,
            other => panic!("not forwarded: {other:?}"),
        }
    }

    #[test]
    fn stage1_tlbis_get_the_vm_vmid_and_keep_their_range() {
        let m = map();
        let c = Command::TlbiNhVa {
            vmid: Vmid(0),
            asid: Asid(3),
            addr: Iova(0xffff_8000_1234_5000),
            scope: range_scope(),
        };
        assert_eq!(
            fwd(translate(&c, VM, &m)),
            Command::TlbiNhVa {
                vmid: VM,
                asid: Asid(3),
                addr: Iova(0xffff_8000_1234_5000),
                scope: range_scope(),
            }
        );
        let c = Command::TlbiNhVaa {
            vmid: Vmid(3),
            addr: Iova(0x1000),
            scope: TlbiScope {
                leaf: false,
                range: None,
            },
        };
        assert_eq!(
            fwd(translate(&c, VM, &m)),
            Command::TlbiNhVaa {
                vmid: VM,
                addr: Iova(0x1000),
                scope: TlbiScope {
                    leaf: false,
                    range: None
                },
            }
        );
        // A guest naming another VMID still only hits its own.
        let c = Command::TlbiNhAsid {
            vmid: Vmid(1),
            asid: Asid(0x1ff),
        };
        assert_eq!(
            fwd(translate(&c, VM, &m)),
            Command::TlbiNhAsid {
                vmid: VM,
                asid: Asid(0x1ff)
            }
        );
        let c = Command::TlbiNhAll { vmid: Vmid(1) };
        assert_eq!(fwd(translate(&c, VM, &m)), Command::TlbiNhAll { vmid: VM });
    }

    #[test]
    fn nsnh_all_becomes_nh_all_of_the_vm() {
        assert_eq!(
            fwd(translate(&Command::TlbiNsnhAll, VM, &map())),
            Command::TlbiNhAll { vmid: VM }
        );
    }

    #[test]
    fn ste_invalidations_reinstall() {
        let m = map();
        let t = |c: Command| translate(&c, VM, &m).unwrap();
        assert_eq!(
            t(Command::CfgiSte {
                sid: StreamId(0x8),
                leaf: true
            }),
            Translated::ReinstallStes(StreamRange::One(StreamId(0x8)))
        );
        // Range 3: 16 StreamIDs around 0x13 (0x10..=0x1f).
        let r = t(Command::CfgiSteRange {
            sid: StreamId(0x13),
            range: 3,
        });
        assert_eq!(
            r,
            Translated::ReinstallStes(StreamRange::Range {
                base: StreamId(0x10),
                log2: 4
            })
        );
        if let Translated::ReinstallStes(range) = r {
            assert!(range.contains(StreamId(0x10)) && range.contains(StreamId(0x1f)));
            assert!(!range.contains(StreamId(0x20)) && !range.contains(StreamId(0xf)));
        }
        // Range 30: half of the StreamID space.
        assert_eq!(
            t(Command::CfgiSteRange {
                sid: StreamId(0xC000_0001),
                range: 30,
            }),
            Translated::ReinstallStes(StreamRange::Range {
                base: StreamId(0x8000_0000),
                log2: 31
            })
        );
        assert_eq!(
            t(Command::CfgiAll),
            Translated::ReinstallStes(StreamRange::All)
        );
        // Also through the decoder: CMD_CFGI_STE_RANGE with Range 31.
        let all = Command::decode([0x0000_0005_0000_0004, 31]).unwrap();
        assert_eq!(t(all), Translated::ReinstallStes(StreamRange::All));
    }

    #[test]
    fn cd_and_atc_invalidations_use_the_physical_streamid() {
        let m = map();
        let c = Command::CfgiCd {
            sid: StreamId(0x10),
            ssid: Ssid(5),
            leaf: true,
        };
        assert_eq!(
            fwd(translate(&c, VM, &m)),
            Command::CfgiCd {
                sid: StreamId(0x2010),
                ssid: Ssid(5),
                leaf: true
            }
        );
        let c = Command::CfgiCdAll { sid: StreamId(0x8) };
        assert_eq!(
            fwd(translate(&c, VM, &m)),
            Command::CfgiCdAll {
                sid: StreamId(0x108)
            }
        );
        let c = Command::AtcInv {
            sid: StreamId(0x8),
            ssid: Some(Ssid(1)),
            global: false,
            addr: Iova(0x20_0000),
            size: 9,
        };
        assert_eq!(
            fwd(translate(&c, VM, &m)),
            Command::AtcInv {
                sid: StreamId(0x108),
                ssid: Some(Ssid(1)),
                global: false,
                addr: Iova(0x20_0000),
                size: 9
            }
        );
        // No device of the VM there: nothing to invalidate.
        for sid in [0u32, 0x108, 0x2010, u32::MAX] {
            let c = Command::CfgiCdAll { sid: StreamId(sid) };
            assert_eq!(translate(&c, VM, &m), Ok(Translated::Drop));
        }
    }

    #[test]
    fn sync_and_prefetch() {
        let m = map();
        assert_eq!(
            translate(&Command::Sync(Sync::none()), VM, &m),
            Ok(Translated::Sync(Sync::none()))
        );
        let c = Command::PrefetchConfig {
            sid: StreamId(0x8),
            ssid: None,
        };
        assert_eq!(translate(&c, VM, &m), Ok(Translated::Drop));
        let c = Command::PrefetchAddr {
            sid: StreamId(0x8),
            ssid: None,
            addr: Iova(0x1000),
            size: 3,
        };
        assert_eq!(translate(&c, VM, &m), Ok(Translated::Drop));
    }

    #[test]
    fn stage2_el2_and_unadvertised_commands_are_cerror_ill() {
        let m = map();
        let none = TlbiScope {
            leaf: false,
            range: None,
        };
        for c in [
            Command::TlbiEl2All,
            Command::TlbiEl2Asid { asid: Asid(1) },
            Command::TlbiEl2Va {
                asid: Asid(1),
                addr: Iova(0),
                scope: none,
            },
            Command::TlbiEl2Vaa {
                addr: Iova(0),
                scope: none,
            },
            Command::TlbiS12Vmall { vmid: VM },
            Command::TlbiS2Ipa {
                vmid: VM,
                addr: Ipa(0x1000),
                scope: none,
            },
            Command::StallTerm { sid: StreamId(8) },
        ] {
            let r = translate(&c, VM, &m);
            assert_eq!(r, Err(CmdError::UnknownOpcode(c.opcode())), "{c}");
            assert_eq!(r.unwrap_err().cerror(), 1);
        }
        // Unknown opcodes never decode in the first place.
        assert_eq!(
            Command::decode([0x07, 0]),
            Err(CmdError::UnknownOpcode(0x07))
        );
    }

    #[test]
    fn checked_translation_enforces_advertised_features() {
        let m = map();
        let p = VsmmuPolicy {
            ril: false,
            asid16: false,
            ssid_bits: 4,
            ..VsmmuPolicy::default()
        };
        let ranged = Command::TlbiNhVa {
            vmid: VM,
            asid: Asid(1),
            addr: Iova(0x1000),
            scope: range_scope(),
        };
        assert!(matches!(
            translate_checked(&ranged, VM, &m, &p),
            Err(CmdError::IllegalField { .. })
        ));
        let with_ril = VsmmuPolicy { ril: true, ..p };
        assert_eq!(fwd(translate_checked(&ranged, VM, &m, &with_ril)), ranged);
        let wide = Command::TlbiNhAsid {
            vmid: VM,
            asid: Asid(0x100),
        };
        assert!(translate_checked(&wide, VM, &m, &p).is_err());
        let cd = |ssid| Command::CfgiCd {
            sid: StreamId(8),
            ssid: Ssid(ssid),
            leaf: false,
        };
        assert!(translate_checked(&cd(15), VM, &m, &p).is_ok());
        assert!(translate_checked(&cd(16), VM, &m, &p).is_err());
        let atc = Command::AtcInv {
            sid: StreamId(8),
            ssid: None,
            global: false,
            addr: Iova(0),
            size: 0,
        };
        assert_eq!(
            translate_checked(&atc, VM, &m, &p),
            Err(CmdError::UnknownOpcode(0x40))
        );
        assert_eq!(
            translate_checked(&Command::TlbiEl2All, VM, &m, &p),
            Err(CmdError::UnknownOpcode(0x20))
        );
    }

    /// Whether `c` is a command a guest's translation may put on the
    /// physical queue, and its VMID/StreamID are the VM's.
    fn is_safe(c: &Command, m: &Map) -> Result<(), String> {
        let sid_ok = |sid: StreamId| m.0.values().any(|&p| p == sid.0);
        let ok = match *c {
            Command::TlbiNhAll { vmid }
            | Command::TlbiNhAsid { vmid, .. }
            | Command::TlbiNhVa { vmid, .. }
            | Command::TlbiNhVaa { vmid, .. } => vmid == VM,
            Command::CfgiCd { sid, .. }
            | Command::CfgiCdAll { sid }
            | Command::AtcInv { sid, .. } => sid_ok(sid),
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(format!("unsafe physical command {c}"))
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// Any decodable guest command: the physical commands carry the
        /// VM's VMID or one of its physical StreamIDs, are never stage 2 or
        /// EL2 commands, are legal encodings, and keep the guest's
        /// addresses and ranges exactly.
        #[test]
        fn translation_never_escapes_the_vm(
            w0 in any::<u64>(),
            w1 in any::<u64>(),
            mask0 in any::<u64>(),
            mask1 in any::<u64>(),
            op in prop::sample::select(vec![
                0x01u8, 0x02, 0x03, 0x04, 0x05, 0x06, 0x10, 0x11, 0x12, 0x13, 0x20, 0x21,
                0x22, 0x23, 0x28, 0x2A, 0x30, 0x40, 0x41, 0x44, 0x45, 0x46,
            ]),
            sid_pick in prop::sample::select(vec![0x8u64, 0x10, 0x108, 0x2010, 0]),
            ril: bool,
        ) {
            let m = map();
            // Thin the random bits so that most entries decode; sometimes
            // aim the StreamID at a mapped vSID or at a physical SID.
            let mut words = [(w0 & mask0 & !0xFF) | u64::from(op), w1 & mask1 & mask0];
            if mask1 & 1 == 0 {
                words[0] = (words[0] & 0xFFFF_FFFF) | (sid_pick << 32);
            }
            let Ok(cmd) = Command::decode(words) else { return Ok(()); };
            let policy = VsmmuPolicy { ril, ..VsmmuPolicy::default() };
            for result in [translate(&cmd, VM, &m), translate_checked(&cmd, VM, &m, &policy)] {
                match result {
                    Ok(Translated::Forward(c)) => {
                        if let Err(e) = is_safe(&c, &m) {
                            prop_assert!(false, "{} from {}", e, cmd);
                        }
                        prop_assert_eq!(Command::decode(c.encode()), Ok(c));
                        // Same opcode (NSNH_ALL aside) and, with the VMID
                        // and StreamID replaced, the same bits: nothing
                        // widened.
                        let orig = cmd.encode();
                        let new = c.encode();
                        if cmd != Command::TlbiNsnhAll {
                            prop_assert_eq!(orig[1], new[1]);
                            let keep = match cmd.opcode() {
                                0x10..=0x13 => !(0xFFFFu64 << 32),
                                _ => 0xFFFF_FFFF,
                            };
                            prop_assert_eq!(orig[0] & keep, new[0] & keep);
                        }
                    }
                    Ok(Translated::ReinstallStes(_) | Translated::Sync(_) | Translated::Drop) => {}
                    Err(e) => prop_assert_eq!(e.cerror(), 1),
                }
            }
            // Stage 2 and EL2 commands never pass.
            if matches!(cmd.opcode(), 0x20..=0x23 | 0x28 | 0x2A | 0x41 | 0x44 | 0x45) {
                prop_assert!(translate(&cmd, VM, &m).is_err());
            }
        }
    }
}
