/*
 * Boot entry points: the image header, the boot CPU's entry and the entry of
 * secondary CPUs started with PSCI CPU_ON.
 */
.section .text.head, "ax"
.global _start
_start:
    /* arm64 Image header (Linux Documentation/arch/arm64/booting.rst). */
    b       primary_entry           /* code0 */
    .word   0                       /* code1 */
    .quad   0x200000                /* text_offset: 2 MiB above RAM base */
    .quad   __image_size            /* image_size, including BSS and stacks */
    .quad   0xa                     /* flags: LE, 4K pages, placement anywhere */
    .quad   0
    .quad   0
    .quad   0
    .ascii  "ARM\x64"               /* magic */
    .word   0

primary_entry:
    mov     x19, x0                 /* DTB address from the boot loader */
    mrs     x1, CurrentEL
    cmp     x1, #(2 << 2)
    b.ne    park                    /* not at EL2: nothing safe to do */
    /* Run where we were linked (no relocation support). */
    adr     x1, _start
    ldr     x2, =_start
    cmp     x1, x2
    b.ne    park
    /* Zero BSS. */
    ldr     x1, =__bss_start
    ldr     x2, =__bss_end
1:  cmp     x1, x2
    b.hs    2f
    str     xzr, [x1], #8
    b       1b
2:  mov     x0, #0
    bl      set_stack
    ldr     x1, =exception_vectors
    msr     vbar_el2, x1
    isb
    mov     x0, x19
    bl      primary_main
    b       park

/* x0 = CPU index (context_id from CPU_ON). */
.global secondary_entry
secondary_entry:
    mov     x19, x0
    ldr     x1, =__max_cpus
    cmp     x0, x1
    b.hs    park
    bl      set_stack
    ldr     x1, =exception_vectors
    msr     vbar_el2, x1
    isb
    mov     x0, x19
    bl      secondary_main
    b       park

/* sp = top of CPU x0's stack, TPIDR_EL2 = x0. Clobbers x1, x2. */
set_stack:
    msr     tpidr_el2, x0
    ldr     x1, =__stacks_start
    ldr     x2, =__stack_size
    madd    x1, x0, x2, x1
    add     sp, x1, x2
    ret

.global park
park:
    wfe
    b       park
