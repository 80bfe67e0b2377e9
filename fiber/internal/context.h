// WARNING: internal to gort's //fiber; not part of its API.
//
// The raw context switch (switch_x86_64.S, switch_aarch64.S) and the layout
// of the frame it saves, which the C++ side builds for a fiber's first switch.

#ifndef GORT_FIBER_INTERNAL_CONTEXT_H_
#define GORT_FIBER_INTERNAL_CONTEXT_H_

#include <cstddef>
#include <cstdint>

extern "C" {
// The switch (see the .S files): saves the running context's callee-saved
// state on its stack, stores the stack pointer in *save_sp, switches to the
// context saved at load_sp and hands it `transfer`. Use SwitchContext below.
#if defined(__x86_64__)
// Entered by a jump with the resume address in %rcx, not by a call: not
// callable from C++.
void gort_fiber_switch();
#else
void* gort_fiber_switch(void** save_sp, void* load_sp, void* transfer);
#endif

// The first frame of every fiber (see the .S files). Not callable from C++.
void gort_fiber_trampoline();
}

namespace gort {
namespace fiber_internal {

// x86-64 only (no-ops elsewhere): whether the switch merges MXCSR exception
// flags instead of restoring the target's exactly (switch_x86_64.S says
// why). Chosen at start-up from the CPU's vendor; tests set it to run both
// paths on any machine. Not while other threads switch.
void SetMxcsrFlagMerging(bool merge);
bool MxcsrFlagMerging();

// Signature of the function the trampoline calls: entry(arg, transfer).
using TrampolineEntry = void (*)(void* arg, void* transfer);

#if defined(__x86_64__)
// Saves the running context, resumes the one saved at load_sp and returns
// the `transfer` value of the switch that later resumes this context.
//
// Entered by a jump, not a call. A call pushes a return-stack-buffer entry
// that no `ret` pops, since the switch leaves into another context: every
// later `ret` of the resumed fiber would then be predicted from an entry one
// place off, a mispredict each (on this project's AMD EPYC VM a yield took
// 26 ns that way, 21 ns without; docs/fiber.md has the figures). Without
// the push, the resumed fiber's returns use the entries the suspending
// fiber's calls left, which are right whenever both parked through the same
// code (a yielding loop, a channel ping-pong). The switch preserves rbx,
// rbp, r12-r15, rsp and the FP control words; the rest is clobbered, as by
// a call. The saved frame sits below the caller's 128-byte red zone.
// (The AVX-512 clobbers follow this file's target flags: a function given
// AVX-512 by `__attribute__((target))` alone must not switch fibers.)
__attribute__((always_inline)) inline void* SwitchContext(void** save_sp,
                                                          void* load_sp,
                                                          void* transfer) {
  void* result;
  // Through the GOT, not the PLT: a PLT stub's unwind info assumes it was
  // called, and a lazy-binding resolver would push onto the red zone. The
  // linker relaxes this to a direct jump where the symbol is local.
  asm volatile(
#if defined(__AVX__)
      "vzeroupper\n\t"  // as a call site would: no dirty upper halves
#endif
      "leaq 1f(%%rip), %%rcx\n\t"
      "jmp *gort_fiber_switch@GOTPCREL(%%rip)\n"
      "1:"
      : "=a"(result), "+D"(save_sp), "+S"(load_sp), "+d"(transfer)
      :
      : "rcx", "r8", "r9", "r10", "r11", "memory", "cc", "xmm0", "xmm1",
        "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
        "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15",
#if defined(__AVX512F__)
        "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22",
        "xmm23", "xmm24", "xmm25", "xmm26", "xmm27", "xmm28", "xmm29",
        "xmm30", "xmm31", "k0", "k1", "k2", "k3", "k4", "k5", "k6", "k7",
#endif
        "st", "st(1)", "st(2)", "st(3)", "st(4)", "st(5)", "st(6)", "st(7)",
        "mm0", "mm1", "mm2", "mm3", "mm4", "mm5", "mm6", "mm7");
  return result;
}

// The frame gort_fiber_switch saves, lowest address first.
struct SwitchFrame {
  std::uint32_t mxcsr;
  std::uint16_t x87_control_word;
  std::uint16_t padding;
  std::uint64_t r12, r13, r14, r15, rbx, rbp;
  std::uint64_t return_address;

  void* frame_pointer() const { return reinterpret_cast<void*>(rbp); }
  void* resume_address() const {
    return reinterpret_cast<void*>(return_address);
  }
};
static_assert(offsetof(SwitchFrame, mxcsr) == 0);
static_assert(offsetof(SwitchFrame, x87_control_word) == 4);
static_assert(offsetof(SwitchFrame, r12) == 8);
static_assert(offsetof(SwitchFrame, r15) == 32);
static_assert(offsetof(SwitchFrame, rbx) == 40);
static_assert(offsetof(SwitchFrame, rbp) == 48);
static_assert(offsetof(SwitchFrame, return_address) == 56);
static_assert(sizeof(SwitchFrame) == 64);
// Stack a saved context takes: the frame, then the 128-byte red zone of the
// code that switched (the frame is written below it).
inline constexpr std::size_t kSwitchFrameSpan = sizeof(SwitchFrame) + 128;

inline void InitFrame(SwitchFrame* f, TrampolineEntry entry, void* arg) {
  *f = SwitchFrame{};
  // The ABI's initial state: all exceptions masked, round to nearest.
  f->mxcsr = 0x1F80;
  f->x87_control_word = 0x037F;
  f->r12 = reinterpret_cast<std::uint64_t>(entry);
  f->rbx = reinterpret_cast<std::uint64_t>(arg);
  f->rbp = 0;  // ends the frame-pointer chain
  f->return_address = reinterpret_cast<std::uint64_t>(&gort_fiber_trampoline);
}
#elif defined(__aarch64__)
struct SwitchFrame {
  std::uint64_t x19, x20, x21, x22, x23, x24, x25, x26, x27, x28;
  std::uint64_t x29, x30;
  std::uint64_t d8, d9, d10, d11, d12, d13, d14, d15;
  std::uint64_t fpcr;
  std::uint64_t fpsr;  // the exception flags, restored exactly

  void* frame_pointer() const { return reinterpret_cast<void*>(x29); }
  void* resume_address() const { return reinterpret_cast<void*>(x30); }
};
static_assert(offsetof(SwitchFrame, x19) == 0);
static_assert(offsetof(SwitchFrame, x20) == 8);
static_assert(offsetof(SwitchFrame, x29) == 80);
static_assert(offsetof(SwitchFrame, x30) == 88);
static_assert(offsetof(SwitchFrame, d8) == 96);
static_assert(offsetof(SwitchFrame, fpcr) == 160);
static_assert(offsetof(SwitchFrame, fpsr) == 168);
static_assert(sizeof(SwitchFrame) == 176);
// AAPCS64 has no red zone.
inline constexpr std::size_t kSwitchFrameSpan = sizeof(SwitchFrame);

// Saves the running context, resumes the one saved at load_sp and returns
// the `transfer` value of the switch that later resumes this context.
// Inlined even at -O0, so that each switching site resumes in its own code.
__attribute__((always_inline)) inline void* SwitchContext(void** save_sp,
                                                          void* load_sp,
                                                          void* transfer) {
  return gort_fiber_switch(save_sp, load_sp, transfer);
}

inline void InitFrame(SwitchFrame* f, TrampolineEntry entry, void* arg) {
  *f = SwitchFrame{};
  f->x19 = reinterpret_cast<std::uint64_t>(arg);
  f->x20 = reinterpret_cast<std::uint64_t>(entry);
  f->x29 = 0;  // ends the frame-pointer chain
  f->x30 = reinterpret_cast<std::uint64_t>(&gort_fiber_trampoline);
  f->fpcr = 0;  // the ABI's initial state: round to nearest, no traps
}
#else
#error "gort's //fiber supports x86-64 and AArch64 only"
#endif

static_assert(sizeof(SwitchFrame) % 16 == 0 && kSwitchFrameSpan % 16 == 0,
              "the stack stays 16-byte aligned across the switch");

}  // namespace fiber_internal
}  // namespace gort

#endif  // GORT_FIBER_INTERNAL_CONTEXT_H_
