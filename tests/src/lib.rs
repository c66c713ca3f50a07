//! Helpers for QEMU scenario tests.
