//! Property tests: the parser and the bundle reader take any input without
//! panicking, and what the runner writes the hypervisor reads back.

use proptest::prelude::*;
use scenario::bundle::{self, Bundle, BundleError};
use scenario::{BootError, Scenario};

const GOOD: &str = r#"# two VMs
[machine]
cpus = 4
memory = "2G"
devices = ["edu,dma_mask=0xffffffffff"]
bootargs = "selftest=dma"

[[vm]]
name = "linux"
cpus = 2
memory = "512M"
kernel = "k/Image"
initrd = "k/initrd"
cmdline = "console=ttyAMA0"
devices = ["00:02.0"]

[[vm]]
name = "bare"
cpus = 1
memory = 0x20_0000
ram_base = 0x8000_0000
kernel = "k/bare.bin"
vsmmu = true
"#;

/// Bytes that matter to the grammar, so random text gets deep into it.
fn toml_ish() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("[machine]\n".to_string()),
        Just("[[vm]]\n".to_string()),
        Just("name = \"a\"\n".to_string()),
        Just("cpus = ".to_string()),
        Just("memory = \"".to_string()),
        Just("\"".to_string()),
        Just("'".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just(",".to_string()),
        Just("#".to_string()),
        Just("\\".to_string()),
        Just("\\u".to_string()),
        Just("\n".to_string()),
        Just("\r\n".to_string()),
        Just("=".to_string()),
        Just("0x".to_string()),
        Just("_".to_string()),
        Just("é".to_string()),
        "[a-z0-9 .:+-]{0,6}",
        any::<char>().prop_map(|c| c.to_string()),
    ];
    prop::collection::vec(piece, 0..60).prop_map(|v| v.concat())
}

proptest! {
    #[test]
    fn parser_never_panics_on_any_text(s in any::<String>()) {
        if let Ok(sc) = Scenario::parse(&s) {
            let _ = sc.validate();
        }
    }

    #[test]
    fn parser_never_panics_on_toml_like_text(s in toml_ish()) {
        match Scenario::parse(&s) {
            Ok(sc) => { let _ = sc.validate(); }
            // Every error names a line inside the text (or none).
            Err(e) => prop_assert!(e.line <= s.split('\n').count(), "{e} for {s:?}"),
        }
    }

    #[test]
    fn parser_never_panics_on_a_mutated_good_file(
        edits in prop::collection::vec((0usize..1000, any::<u8>()), 1..6),
        cut in 0usize..1000,
    ) {
        let mut b = GOOD.as_bytes().to_vec();
        for (at, byte) in edits {
            let at = at % b.len();
            b[at] = byte;
        }
        b.truncate(cut.max(1) * b.len() / 1000);
        let s = String::from_utf8_lossy(&b);
        if let Ok(sc) = Scenario::parse(&s) {
            let _ = sc.validate();
        }
    }

    #[test]
    fn validate_never_panics_on_any_numbers(
        machine in (prop_oneof![0u32..8, any::<u32>()], prop_oneof![(0u64..4096).prop_map(|m| m << 20), any::<u64>()]),
        vms in prop::collection::vec(
            (
                prop_oneof![0u32..4, any::<u32>()],
                prop_oneof![(0u64..1024).prop_map(|m| m << 20), any::<u64>()],
                prop_oneof![(0u64..4096).prop_map(|m| m << 20), any::<u64>()],
                "[a-z]{0,3}",
            ),
            0..5,
        ),
    ) {
        let mut s = Scenario::parse(GOOD).unwrap();
        (s.machine.cpus, s.machine.memory) = machine;
        let template = s.vms[0].clone();
        s.vms = vms
            .into_iter()
            .map(|(cpus, memory, ram_base, name)| scenario::VmSpec { name, cpus, memory, ram_base, ..template.clone() })
            .collect();
        if s.validate().is_ok() {
            // What passes really fits: the rules hold without overflow.
            let cpus: u64 = s.vms.iter().map(|v| u64::from(v.cpus)).sum();
            prop_assert!(cpus <= u64::from(s.machine.cpus));
            for v in &s.vms {
                let (start, end) = v.ram().unwrap();
                prop_assert!(start >= scenario::guest_layout::RAM_MIN && end <= scenario::guest_layout::RAM_END);
            }
        }
    }

    #[test]
    fn to_text_reads_back_the_same(
        strings in prop::collection::vec(any::<String>(), 6),
        arrays in prop::collection::vec(prop::collection::vec(any::<String>(), 0..3), 3),
        numbers in prop::collection::vec(any::<u64>(), 4),
        cpus in (any::<u32>(), any::<u32>()),
        flags in (any::<bool>(), any::<bool>(), any::<bool>()),
    ) {
        let mut s = Scenario::parse(GOOD).unwrap();
        let m = &mut s.machine;
        (m.cpus, m.memory, m.smmu) = (cpus.0, numbers[0], flags.0);
        (m.cpu, m.machine, m.bootargs) = (strings[0].clone(), strings[1].clone(), strings[2].clone());
        (m.devices, m.qemu_args) = (arrays[0].clone(), arrays[1].clone());
        let v = &mut s.vms[1];
        (v.cpus, v.memory, v.ram_base, v.vsmmu) = (cpus.1, numbers[1], numbers[2], flags.1);
        (v.name, v.kernel, v.cmdline) = (strings[3].clone(), strings[4].clone(), strings[5].clone());
        v.initrd = flags.2.then(|| numbers[3].to_string());
        v.devices = arrays[2].clone();
        let text = s.to_text();
        let mut back = Scenario::parse(&text).unwrap();
        for (b, v) in back.vms.iter_mut().zip(&s.vms) {
            b.line = v.line;
        }
        prop_assert_eq!(back, s, "{}", text);
    }

    #[test]
    fn bundle_round_trips(
        entries in prop::collection::btree_map("[a-z/._-]{1,47}", prop::collection::vec(any::<u8>(), 0..9000), 0..8),
    ) {
        let list: Vec<(&str, &[u8])> = entries.iter().map(|(n, d)| (n.as_str(), d.as_slice())).collect();
        let blob = bundle::pack(&list).unwrap();
        let b = Bundle::parse(&blob).unwrap();
        prop_assert_eq!(b.len(), list.len());
        let back: Vec<(&str, &[u8])> = b.iter().collect();
        prop_assert_eq!(&back, &list);
        for (n, d) in &list {
            prop_assert_eq!(b.get(n), Some(*d));
        }
    }

    #[test]
    fn bundle_parse_never_panics_on_any_bytes(blob in prop::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(b) = Bundle::parse(&blob) {
            let _ = b.iter().count();
        }
    }

    #[test]
    fn bundle_parse_never_panics_on_a_mutated_header(
        edits in prop::collection::vec((0usize..4096 + 200, any::<u8>()), 1..8),
        cut in 0usize..20000,
    ) {
        let mut blob = bundle::pack(&[("scenario", GOOD.as_bytes()), ("k/Image", &[7u8; 5000]), ("k/initrd", b"x")]).unwrap();
        for (at, byte) in edits {
            // Mostly the header and table, where hostile values matter.
            let at = if at < 4096 { at % 200 } else { at % blob.len() };
            blob[at] = byte;
        }
        blob.truncate(cut.min(blob.len()));
        if let Ok(b) = Bundle::parse(&blob) {
            // What parse accepts, iteration hands out in full and in bounds.
            prop_assert_eq!(b.iter().count(), b.len());
            for (name, data) in &b {
                prop_assert_eq!(b.get(name).map(<[u8]>::len), Some(data.len()));
            }
        }
    }
}

#[test]
fn from_bundle_is_what_the_hypervisor_does() {
    let image = [1u8; 100];
    let blob = bundle::pack(&[
        ("scenario", GOOD.as_bytes()),
        ("k/Image", &image),
        ("k/initrd", b"rd"),
        ("k/bare.bin", b"bare"),
    ])
    .unwrap();
    let (s, b) = Scenario::from_bundle(&blob).unwrap();
    assert_eq!(s.vms.len(), 2);
    assert_eq!(b.get(&s.vms[0].kernel), Some(&image[..]));
    assert_eq!(b.get(s.vms[0].initrd.as_deref().unwrap()), Some(&b"rd"[..]));

    let blob = bundle::pack(&[
        ("scenario", GOOD.as_bytes()),
        ("k/Image", &image),
        ("k/initrd", b"rd"),
    ])
    .unwrap();
    let e = Scenario::from_bundle(&blob).unwrap_err();
    assert_eq!(
        e.to_string(),
        "vm \"bare\": image k/bare.bin is not in the boot bundle"
    );

    let blob = bundle::pack(&[("k/Image", &image)]).unwrap();
    assert_eq!(
        Scenario::from_bundle(&blob).unwrap_err(),
        BootError::NoScenario
    );
    assert_eq!(
        Scenario::from_bundle(b"nonsense, not a bundle").unwrap_err(),
        BootError::Bundle(BundleError::BadMagic)
    );
    let bad = GOOD.replace("cpus = 4", "cpus = 2");
    let blob = bundle::pack(&[("scenario", bad.as_bytes())]).unwrap();
    assert_eq!(
        Scenario::from_bundle(&blob).unwrap_err().to_string(),
        "scenario: machine: the VMs need 3 vCPUs in all, the machine has 2 CPUs (each vCPU is pinned to its own CPU)"
    );
}
