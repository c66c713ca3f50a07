/*
 * EL2 exception vectors. Every entry saves the general-purpose registers,
 * ELR_EL2 and SPSR_EL2 into a TrapFrame on the stack and calls
 * `exception_entry(frame, vector_index)`; on return the frame is restored.
 */
.equ FRAME_SIZE, 272

.macro VECTOR index
    .balign 0x80
    sub     sp, sp, #FRAME_SIZE
    stp     x0, x1, [sp, #0]
    mov     x1, #\index
    b       exception_common
.endm

.section .text.vectors, "ax"
.balign 0x800
.global exception_vectors
exception_vectors:
    VECTOR 0
    VECTOR 1
    VECTOR 2
    VECTOR 3
    VECTOR 4
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

exception_common:
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    stp     x16, x17, [sp, #128]
    stp     x18, x19, [sp, #144]
    stp     x20, x21, [sp, #160]
    stp     x22, x23, [sp, #176]
    stp     x24, x25, [sp, #192]
    stp     x26, x27, [sp, #208]
    stp     x28, x29, [sp, #224]
    mrs     x2, elr_el2
    stp     x30, x2, [sp, #240]
    mrs     x2, spsr_el2
    str     x2, [sp, #256]
    mov     x0, sp
    bl      exception_entry
.global exception_return
exception_return:
    ldr     x2, [sp, #256]
    msr     spsr_el2, x2
    ldp     x30, x2, [sp, #240]
    msr     elr_el2, x2
    ldp     x28, x29, [sp, #224]
    ldp     x26, x27, [sp, #208]
    ldp     x24, x25, [sp, #192]
    ldp     x22, x23, [sp, #176]
    ldp     x20, x21, [sp, #160]
    ldp     x18, x19, [sp, #144]
    ldp     x16, x17, [sp, #128]
    ldp     x14, x15, [sp, #112]
    ldp     x12, x13, [sp, #96]
    ldp     x10, x11, [sp, #80]
    ldp     x8, x9, [sp, #64]
    ldp     x6, x7, [sp, #48]
    ldp     x4, x5, [sp, #32]
    ldp     x2, x3, [sp, #16]
    ldp     x0, x1, [sp, #0]
    add     sp, sp, #FRAME_SIZE
    eret

/*
 * enter_guest(src: *const TrapFrame, dst: *mut TrapFrame) -> !
 * Copies the frame to `dst` (the top of this CPU's stack), makes it the
 * stack, and returns to the guest through the common restore path. Uses no
 * stack while copying, so `dst` may overlap the caller's (dead) frames.
 */
.global enter_guest
enter_guest:
    mov     x2, #0
1:  add     x5, x0, x2
    add     x6, x1, x2
    ldp     x3, x4, [x5]
    stp     x3, x4, [x6]
    add     x2, x2, #16
    cmp     x2, #FRAME_SIZE
    b.lo    1b
    mov     sp, x1
    b       exception_return
