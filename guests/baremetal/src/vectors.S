/*
 * EL1 exception vectors of the bare-metal test guest. Every exception is
 * final: the entry passes its index, ESR_EL1, FAR_EL1 and ELR_EL1 to
 * `guest_exception`, which reports it and powers the VM off. The one
 * exception: `SVC #0x5b` from EL1 returns at once (the trap benchmark's
 * null exception, `trapbench.rs`; its caller gives up x16 and x17).
 */
.macro VECTOR index
    .balign 0x80
    mov     x0, #\index
    mrs     x1, esr_el1
    mrs     x2, far_el1
    mrs     x3, elr_el1
    b       guest_exception
.endm

.section .text.vectors, "ax"
.balign 0x800
.global guest_vectors
guest_vectors:
    VECTOR 0
    VECTOR 1
    VECTOR 2
    VECTOR 3
    .balign 0x80
    mrs     x16, esr_el1
    mov     x17, #0x5b
    movk    x17, #0x5600, lsl #16
    cmp     x16, x17
    b.ne    1f
    eret
1:  mov     x0, #4
    mrs     x1, esr_el1
    mrs     x2, far_el1
    mrs     x3, elr_el1
    b       guest_exception
    VECTOR 5
    VECTOR 6
    VECTOR 7
    VECTOR 8
    VECTOR 9
    VECTOR 10
    VECTOR 11
    VECTOR 12
    VECTOR 13
    VECTOR 14
    VECTOR 15
