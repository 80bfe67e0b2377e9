// gort's context switch for AArch64 (AAPCS64).
//
//   void* gort_fiber_switch(void** save_sp, void* load_sp, void* transfer);
//
// Same contract as switch_x86_64.S. Saves x19-x28, the frame pointer x29, the
// link register x30, d8-d15 and FPCR; returns `transfer` in the resumed
// context.
//
// Saved frame, from the saved stack pointer upwards (SwitchFrame in context.h):
//   0: x19 x20  16: x21 x22  32: x23 x24  48: x25 x26  64: x27 x28
//   80: x29 x30  96: d8 d9  112: d10 d11  128: d12 d13  144: d14 d15
//   160: fpcr  168: fpsr                                  (176 bytes)
#if defined(__aarch64__)
        .text
        .globl  gort_fiber_switch
        .type   gort_fiber_switch, %function
        .p2align 4
gort_fiber_switch:
        .cfi_startproc
        sub     sp, sp, #176
        .cfi_def_cfa_offset 176
        stp     x19, x20, [sp, #0]
        stp     x21, x22, [sp, #16]
        stp     x23, x24, [sp, #32]
        stp     x25, x26, [sp, #48]
        stp     x27, x28, [sp, #64]
        stp     x29, x30, [sp, #80]
        .cfi_offset x29, -96
        .cfi_offset x30, -88
        stp     d8, d9, [sp, #96]
        stp     d10, d11, [sp, #112]
        stp     d12, d13, [sp, #128]
        stp     d14, d15, [sp, #144]
        mrs     x9, fpcr
        mrs     x10, fpsr           // the exception flags: a switch keeps them
        stp     x9, x10, [sp, #160]

        mov     x9, sp
        str     x9, [x0]            // publish the saved context
        mov     sp, x1              // now on the target's stack, same frame shape

        ldp     x9, x10, [sp, #160]
        msr     fpcr, x9
        msr     fpsr, x10
        ldp     x19, x20, [sp, #0]
        ldp     x21, x22, [sp, #16]
        ldp     x23, x24, [sp, #32]
        ldp     x25, x26, [sp, #48]
        ldp     x27, x28, [sp, #64]
        ldp     x29, x30, [sp, #80]
        ldp     d8, d9, [sp, #96]
        ldp     d10, d11, [sp, #112]
        ldp     d12, d13, [sp, #128]
        ldp     d14, d15, [sp, #144]
        add     sp, sp, #176
        .cfi_def_cfa_offset 0
        .cfi_restore x29
        .cfi_restore x30
        mov     x0, x2
        // A branch, not `ret`: the return predictor would expect our own
        // caller, always wrong for a switch (see switch_x86_64.S).
        br      x30
        .cfi_endproc
        .size   gort_fiber_switch, .-gort_fiber_switch

// First frame of every fiber: x19 = argument, x20 = entry function,
// x0 = transfer value, x29 = 0. Calls entry(arg, transfer), which never
// returns; x30 = 0 and the undefined return address end unwinding here.
        .globl  gort_fiber_trampoline
        .type   gort_fiber_trampoline, %function
        .p2align 4
        // The FDE starts one instruction early: unwinders look up the
        // return address minus one, which for a fiber's first frame would
        // otherwise fall in gort_fiber_switch's FDE.
        .cfi_startproc
        .cfi_undefined x30
        nop
gort_fiber_trampoline:
        mov     x1, x0
        mov     x0, x19
        mov     x29, #0
        mov     x30, #0
        blr     x20
        brk     #0
        .cfi_endproc
        .size   gort_fiber_trampoline, .-gort_fiber_trampoline

        .section .note.GNU-stack,"",%progbits
#endif  // __aarch64__
