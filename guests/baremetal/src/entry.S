/*
 * Entry of the bare-metal test guest: arm64 Image header, self-relocation,
 * BSS, stack, FP/SIMD access, EL1 vectors, then `guest_main(dtb)`; and
 * the entry of secondary CPUs (`secondary_entry`).
 *
 * Boot contract (Linux Documentation/arch/arm64/booting.rst): loaded at a
 * 2 MiB-aligned RAM base + text_offset, entered at _start at EL1 with the MMU
 * off and x0 = the device tree's address.
 */
.section .text.head, "ax"
.global _start
_start:
    /* arm64 Image header. */
    b       guest_entry             /* code0 */
    .word   0                       /* code1 */
    .quad   0x200000                /* text_offset: 2 MiB above RAM base */
    .quad   __image_size            /* image_size, including BSS and stack */
    .quad   0xa                     /* flags: LE, 4K pages, placement anywhere */
    .quad   0
    .quad   0
    .quad   0
    .ascii  "ARM\x64"               /* magic */
    .word   0

guest_entry:
    mov     x19, x0                 /* DTB address */
    adr     x20, _start             /* load address = relocation offset (linked at 0) */

    /* Apply R_AARCH64_RELATIVE relocations: *(base + offset) = base + addend. */
    adrp    x1, __rela_start
    add     x1, x1, :lo12:__rela_start
    adrp    x2, __rela_end
    add     x2, x2, :lo12:__rela_end
1:  cmp     x1, x2
    b.hs    2f
    ldp     x3, x4, [x1], #16       /* r_offset, r_info */
    ldr     x5, [x1], #8            /* r_addend */
    cmp     x4, #1027               /* R_AARCH64_RELATIVE */
    b.ne    park                    /* nothing else is expected in this image */
    add     x5, x5, x20
    str     x5, [x3, x20]
    b       1b

    /* Zero BSS. */
2:  adrp    x1, __bss_start
    add     x1, x1, :lo12:__bss_start
    adrp    x2, __bss_end
    add     x2, x2, :lo12:__bss_end
3:  cmp     x1, x2
    b.hs    4f
    str     xzr, [x1], #8
    b       3b

4:  adrp    x1, __stack_end
    add     x1, x1, :lo12:__stack_end
    mov     sp, x1
    bl      cpu_setup
    mov     x0, x19
    bl      guest_main

park:
    wfi
    b       park

/*
 * What every CPU sets up before Rust runs (clobbers x1): FP/SIMD at EL1 and
 * EL0 without traps (CPACR_EL1.FPEN = 0b11, the compiler uses the SIMD
 * registers) and the EL1 vectors.
 */
cpu_setup:
    mov     x1, #(3 << 20)
    msr     cpacr_el1, x1
    adrp    x1, guest_vectors
    add     x1, x1, :lo12:guest_vectors
    msr     vbar_el1, x1
    isb
    ret

/*
 * Entry of a secondary CPU started by PSCI CPU_ON (`smp.rs`), after the boot
 * CPU relocated the image and zeroed BSS: x0 = the context ID, the top of
 * the stack `smp.rs` gave this CPU. MMU off, as at _start.
 */
.global secondary_entry
secondary_entry:
    mov     sp, x0
    bl      cpu_setup
    mrs     x0, mpidr_el1
    and     x0, x0, #0xff           /* Aff0: the hypervisor numbers vCPUs there */
    bl      guest_secondary
    b       park
