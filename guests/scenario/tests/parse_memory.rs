//! The parser's heap use on the worst texts up to `MAX_INPUT`: the
//! hypervisor parses the scenario on its 8 MiB heap, so no text may need
//! more than a fraction of it. (One test in its own binary, so that the
//! counting allocator sees only the parse.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use scenario::{Scenario, MAX_INPUT};

struct Counting;

static NOW: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grow(by: usize) {
    let now = NOW.fetch_add(by, Relaxed) + by;
    PEAK.fetch_max(now, Relaxed);
}

// SAFETY: every call is passed on to the system allocator unchanged; the
// counters only observe the sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        grow(l.size());
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(l) }
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        NOW.fetch_sub(l.size(), Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(p, l) }
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, size: usize) -> *mut u8 {
        if size > l.size() {
            grow(size - l.size());
        } else {
            NOW.fetch_sub(l.size() - size, Relaxed);
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(p, l, size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Most heap one parse may take.
const BUDGET: usize = 2 << 20;

/// `unit` repeated to fill `MAX_INPUT` after `head`.
fn fill(head: &str, unit: &str, tail: &str) -> String {
    let n = (MAX_INPUT - head.len() - tail.len()) / unit.len();
    format!("{head}{}{tail}", unit.repeat(n))
}

#[test]
fn parsing_the_worst_texts_fits_the_hypervisor_heap() {
    let machine = "[machine]\ncpus = 1\nmemory = \"1G\"\n";
    let vm = "[[vm]]\nname = \"a\"\ncpus = 1\nmemory = \"2M\"\nkernel = \"k\"\n";
    let texts = [
        fill("", "[", ""),
        fill("", ".", ""),
        fill("", "=", ""),
        fill("", "\n", ""),
        fill("", "\"", ""),
        fill("", "a.", "=1"),
        fill("a = [", ",", "]"),
        fill("a = [", "[],", "]"),
        fill("a = [", "{},", "]"),
        fill("a = [", "1,", "]"),
        fill("a = [", "\"\",", "]"),
        fill("", "[[a]]\n", ""),
        fill(machine, "x = 1\n", ""),
        fill(machine, "a = b c d e ", ""),
        fill(machine, vm, ""),
        // A key given twice, found after a long valid text: the text before
        // it is parsed a second time.
        fill(machine, "# comment\n", "cpus = 2\n"),
        fill("", "[[vm]]\n", "[[vm]]\ncpus = 1\ncpus = 1\n"),
    ];
    for text in &texts {
        assert!(text.len() <= MAX_INPUT);
        let before = NOW.load(Relaxed);
        PEAK.store(before, Relaxed);
        let result = Scenario::parse(text);
        let peak = PEAK.load(Relaxed) - before;
        drop(result);
        assert!(
            peak <= BUDGET,
            "{peak} bytes of heap to parse {:?}...",
            &text[..40.min(text.len())]
        );
    }
}
