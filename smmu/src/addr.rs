//! Address and identifier newtypes.
//!
//! Each address space has its own type so that a guest physical address can
//! never be handed to the SMMU as a host physical address by accident.

use core::fmt;

macro_rules! address {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[repr(transparent)]
        pub struct $name(pub $inner);

        impl $name {
            /// The raw value.
            pub const fn raw(self) -> $inner {
                self.0
            }

            /// `self + bytes`; `None` on overflow.
            pub const fn checked_add(self, bytes: $inner) -> Option<Self> {
                match self.0.checked_add(bytes) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }

            /// Whether the address is a multiple of `align` (a power of two).
            pub const fn is_aligned(self, align: $inner) -> bool {
                self.0 & (align - 1) == 0
            }

            /// Rounds down to a multiple of `align` (a power of two).
            pub const fn align_down(self, align: $inner) -> Self {
                Self(self.0 & !(align - 1))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:#x})"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }

        impl fmt::LowerHex for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::LowerHex::fmt(&self.0, f)
            }
        }
    };
}

address!(
    /// A host physical address (the output of stage 2).
    PhysAddr(u64)
);
address!(
    /// An intermediate physical address: a guest's physical address, the
    /// input of stage 2.
    Ipa(u64)
);
address!(
    /// An I/O virtual address: the address a device puts on the bus, the
    /// input of stage 1 (or of stage 2 when stage 1 is bypassed).
    Iova(u64)
);
address!(
    /// A virtual address in the hypervisor's own EL2 address space.
    VirtAddr(usize)
);

macro_rules! identifier {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[repr(transparent)]
        pub struct $name(pub $inner);

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:#x})"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }
    };
}

identifier!(
    /// A StreamID: identifies the device (for PCI, derived from the requester
    /// ID through the `iommu-map`), indexes the stream table.
    StreamId(u32)
);
identifier!(
    /// A virtual machine identifier, tags stage-2 TLB entries (8 or 16 bits,
    /// IDR0.VMID16).
    Vmid(u16)
);
identifier!(
    /// An address space identifier, tags stage-1 TLB entries (8 or 16 bits,
    /// IDR0.ASID16).
    Asid(u16)
);
identifier!(
    /// A SubstreamID (PASID): indexes a stream's context-descriptor table.
    Ssid(u32)
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_helpers() {
        assert!(PhysAddr(0x4000_0000).is_aligned(0x20_0000));
        assert!(!PhysAddr(0x4000_1000).is_aligned(0x20_0000));
        assert_eq!(Ipa(0x1234_5678).align_down(0x1000), Ipa(0x1234_5000));
        assert_eq!(Iova(u64::MAX).checked_add(1), None);
        assert_eq!(format!("{:?}", StreamId(8)), "StreamId(0x8)");
    }
}
