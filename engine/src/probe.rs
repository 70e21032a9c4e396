//! The KVM probe's guest: a 64 KiB firmware image that proves an accelerator really runs code.
//!
//! `/dev/kvm` existing is not enough (nested KVM can be present and hang every guest). The probe
//! boots this firmware with `-bios` and an `isa-debug-exit` device: the reset vector writes a
//! byte to the exit port and QEMU exits with status `(byte << 1) | 1`. Seeing that status within a
//! deadline proves that the accelerator executed guest instructions.

/// I/O port of the `isa-debug-exit` device the probe firmware writes to.
pub const EXIT_PORT: u8 = 0xf4;
/// The byte the firmware writes.
pub const EXIT_VALUE: u8 = 0x2a;
/// The exit status QEMU then reports.
pub const EXPECTED_STATUS: i32 = ((EXIT_VALUE as i32) << 1) | 1;

/// The firmware image: zeros, with `mov al, 0x2a; out 0xf4, al; cli; hlt` at the reset vector.
pub fn firmware() -> Vec<u8> {
    let mut rom = vec![0u8; 64 * 1024];
    let reset = 0xfff0;
    let code = [0xb0, EXIT_VALUE, 0xe6, EXIT_PORT, 0xfa, 0xf4];
    rom[reset..reset + code.len()].copy_from_slice(&code);
    rom
}

/// QEMU arguments (after the binary) that boot [`firmware`] from `bios_path` with `accel`.
pub fn qemu_args(bios_path: &str, accel: &str) -> Vec<String> {
    [
        "-machine",
        &format!("pc,accel={accel}"),
        "-nodefaults",
        "-display",
        "none",
        "-no-user-config",
        "-m",
        "16",
        "-bios",
        bios_path,
        "-device",
        &format!("isa-debug-exit,iobase={EXIT_PORT:#x},iosize=1"),
        "-serial",
        "none",
        "-monitor",
        "none",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}
