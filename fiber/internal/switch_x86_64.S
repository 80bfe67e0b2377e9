// gort's context switch for x86-64 (System V ABI).
//
// Entered by a jump, not a call (fiber_internal::SwitchContext in
// context.h says why), with
//   %rdi = save_sp, %rsi = load_sp, %rdx = transfer,
//   %rcx = the address to resume the running context at.
// Saves the callee-saved state of the running context on its own stack,
// stores the resulting stack pointer in *save_sp, loads load_sp, restores
// the state saved there and jumps to its resume address with `transfer` in
// %rax (SwitchContext's result there, or the trampoline's input for a new
// fiber). The stack pointer the resumed code sees is the one it had when it
// switched away.
//
// Saved frame, from the saved stack pointer upwards (see SwitchFrame in
// context.h, whose static_asserts pin these offsets):
//   0: MXCSR (4 bytes), 4: x87 control word (2 bytes), 6: padding
//   8: r12  16: r13  24: r14  32: r15  40: rbx  48: rbp  56: resume address
//   64-191: the switching code's red zone, left untouched
// It is written 0xc0 bytes below the stack pointer at entry, so that the
// 128 bytes below that pointer, which a leaf function may use without
// moving %rsp (and SwitchContext's caller looks like one to the compiler),
// survive.
//
// Profilers: the CFI below stays true for every instruction, on both sides of
// the stack swap, because both stacks hold a frame of the same shape. A SIGPROF
// that lands mid-switch therefore unwinds through one stack or the other, and
// the frame-pointer chain (rbp) is valid throughout as well.
#if defined(__x86_64__)
        .text
        .globl  gort_fiber_switch
        .type   gort_fiber_switch, @function
        .p2align 4
gort_fiber_switch:
        .cfi_startproc
        // Nothing was pushed: the caller's frame starts at %rsp, and its
        // resume address is in %rcx.
        .cfi_def_cfa %rsp, 0
        .cfi_register %rip, %rcx
        leaq    -0xc0(%rsp), %rsp
        .cfi_adjust_cfa_offset 0xc0
        movq    %rcx, 0x38(%rsp)
        .cfi_rel_offset %rip, 0x38
        stmxcsr (%rsp)
        fnstcw  0x4(%rsp)
        movq    %r12, 0x08(%rsp)
        .cfi_rel_offset %r12, 0x08
        movq    %r13, 0x10(%rsp)
        .cfi_rel_offset %r13, 0x10
        movq    %r14, 0x18(%rsp)
        .cfi_rel_offset %r14, 0x18
        movq    %r15, 0x20(%rsp)
        .cfi_rel_offset %r15, 0x20
        movq    %rbx, 0x28(%rsp)
        .cfi_rel_offset %rbx, 0x28
        movq    %rbp, 0x30(%rsp)
        .cfi_rel_offset %rbp, 0x30

        cmpb    $0, gort_fiber_merge_mxcsr_flags(%rip)
        jne     .Lgort_merge_flags

        // Exact MXCSR (AMD): the target's saved value, flags included.
        // Our x87 control word, to skip fldcw when the target's is the same
        // (nearly always: a program rarely changes it). fldcw costs ~0.6 ns
        // per switch on AMD Zen 4; this read-back of fnstcw's store does not.
        movzwl  0x4(%rsp), %r10d
        movq    %rsp, (%rdi)        // publish the saved context
        movq    %rsi, %rsp          // now on the target's stack, same frame shape
        // Load the resume address first, so the indirect jump's target is
        // known early (ldmxcsr and fldcw are slow).
        movq    0x38(%rsp), %r8
        ldmxcsr (%rsp)
.Lgort_mxcsr_done:
        cmpw    0x4(%rsp), %r10w
        je      1f
        fldcw   0x4(%rsp)
1:
        movq    0x08(%rsp), %r12
        movq    0x10(%rsp), %r13
        movq    0x18(%rsp), %r14
        movq    0x20(%rsp), %r15
        movq    0x28(%rsp), %rbx
        movq    0x30(%rsp), %rbp
        .cfi_remember_state
        leaq    0xc0(%rsp), %rsp
        .cfi_def_cfa_offset 0
        .cfi_restore %r12
        .cfi_restore %r13
        .cfi_restore %r14
        .cfi_restore %r15
        .cfi_restore %rbx
        .cfi_restore %rbp
        .cfi_register %rip, %r8
        movq    %rdx, %rax
        // A jump, not `ret`: nothing was pushed, on either stack or the
        // return stack buffer.
        jmpq    *%r8

        // Merged MXCSR (Intel): the target's control bits, plus the
        // exception flags (bits 0-5) of both sides. Loading a value that
        // differs from the current one only in its flags costs ~70 ns on an
        // Intel Xeon (measured: a round trip between a context whose
        // inexact flag is set and one whose flag is clear took 156-195 ns
        // instead of 10-15), and any fiber that does floating point sets
        // that flag. So the flags only accumulate, and when the merged value
        // equals the current one, nothing is loaded. The control bits are
        // callee-saved and come back exactly; the flags are caller-saved,
        // and a switch never clears one (as C asks of a call). On AMD the
        // read-back of the stmxcsr store costs ~4.5 ns per round trip
        // instead, and reloading is cheap: that is the exact path above.
.Lgort_merge_flags:
        .cfi_restore_state
        movl    (%rsp), %eax        // our MXCSR, read before the frame is published
        movzwl  0x4(%rsp), %r10d    // our x87 control word, as above
        movq    %rsp, (%rdi)
        movq    %rsi, %rsp
        movq    0x38(%rsp), %r8
        movl    %eax, %ecx
        andl    $0x3f, %ecx
        orl     (%rsp), %ecx
        cmpl    %eax, %ecx
        je      .Lgort_mxcsr_done
        movl    %ecx, (%rsp)
        ldmxcsr (%rsp)
        jmp     .Lgort_mxcsr_done
        .cfi_endproc
        .size   gort_fiber_switch, .-gort_fiber_switch

// How the switch restores MXCSR: nonzero merges exception flags (see
// above). Set once at start-up from the CPU's vendor (fiber.cc); until then,
// and on CPUs not known to prefer the exact path, it merges.
        .data
        .globl  gort_fiber_merge_mxcsr_flags
        .hidden gort_fiber_merge_mxcsr_flags
        .type   gort_fiber_merge_mxcsr_flags, @object
        .size   gort_fiber_merge_mxcsr_flags, 1
gort_fiber_merge_mxcsr_flags:
        .byte   1
        .text

// The first frame of every fiber. gort_fiber_switch jumps here with
//   %rbx = argument for the entry function, %r12 = entry function,
//   %rax = the transfer value of the switch that started the fiber,
//   %rbp = 0 and %rsp 16-byte aligned.
// It calls entry(arg, transfer), which never returns. The undefined return
// address and the zero frame pointer end every unwinder's walk here.
        .globl  gort_fiber_trampoline
        .type   gort_fiber_trampoline, @function
        .p2align 4
        // The FDE starts one byte early: unwinders look up the return
        // address minus one, which for a fiber's first frame would
        // otherwise fall in gort_fiber_switch's FDE.
        .cfi_startproc
        .cfi_undefined %rip
        nop
gort_fiber_trampoline:
        xorl    %ebp, %ebp
        movq    %rbx, %rdi
        movq    %rax, %rsi
        callq   *%r12
        ud2
        .cfi_endproc
        .size   gort_fiber_trampoline, .-gort_fiber_trampoline

        .section .note.GNU-stack,"",%progbits
#endif  // __x86_64__
