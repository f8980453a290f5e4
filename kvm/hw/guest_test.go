package hw

import (
	"encoding/binary"
	"strings"
	"testing"

	"golang.org/x/arch/x86/x86asm"

	"klp-kvm/kvm/engine"
)

// A tiny long-mode guest for the real-KVM tests, assembled from this source
// with GNU as (as --64; ld -Ttext=0x10000; objcopy -O binary):
//
//	io_entry:                       # 0x10000: the exits user space handles
//	    mov $0xab, %al ; out %al, $0x10      # OUT, 1 byte
//	    in $0x11, %eax                       # IN, 4 bytes: host answers
//	    out %eax, $0x12                      # echoes it: proves IN completion
//	    mov %eax, 0x10000000                 # MMIO write outside RAM
//	    mov 0x10000008, %ebx                 # MMIO read: host answers
//	    mov %ebx, %eax ; out %eax, $0x13     # echoes it
//	    lea msg(%rip), %rsi ; mov $5, %ecx ; mov $0x14, %dx ; rep outsb
//	    cli ; hlt                            # sleeps in KVM (in-kernel LAPIC)
//	    mov $42, %eax ; out %eax, $0xf4      # never reached: only NMI/INIT end it
//	1:  jmp 1b
//	msg: .ascii "hello"
//	loop_entry:  inc %rax ; jmp loop_entry   # 0x1003c: tight loop for Kick
//	timer_entry:                             # 0x10041: x2APIC periodic timer
//	    wrmsr SVR(0x80f)=0x1ff ; TDCR(0x83e)=0xb (divide by 1)
//	    wrmsr LVTT(0x832)=0x20040 (periodic, vector 0x40) ; TMICT(0x838)=1000000
//	    sti ; 2: hlt ; jmp 2b
//	timer_handler:                           # 0x10077: vector 0x40
//	    push rax,rcx,rdx ; lock incl 0x8000 ; mov 0x8000,%eax ; out %eax,$0x21
//	    wrmsr EOI(0x80b)=0 ; pop rdx,rcx,rax ; iretq
//	smp_entry:                               # 0x1009b: RSI = cpu, EDI = total
//	    mov $100000,%ecx ; 3: lock incl 0x8000 ; dec %ecx ; jnz 3b
//	    mov %esi,%eax ; out %eax,$0x31
//	    4: pause ; mov 0x8000,%eax ; cmp %edi,%eax ; jne 4b ; out %eax,$0x32
//	    cli ; 5: hlt ; jmp 5b
//	out_loop: out %al, $0x10 ; jmp out_loop  # 0x100c3: one exit per iteration
var guestCode = []byte{
	0xb0, 0xab, 0xe6, 0x10, 0xe5, 0x11, 0xe7, 0x12, 0x89, 0x04, 0x25, 0x00,
	0x00, 0x00, 0x10, 0x8b, 0x1c, 0x25, 0x08, 0x00, 0x00, 0x10, 0x89, 0xd8,
	0xe7, 0x13, 0x48, 0x8d, 0x35, 0x16, 0x00, 0x00, 0x00, 0xb9, 0x05, 0x00,
	0x00, 0x00, 0x66, 0xba, 0x14, 0x00, 0xf3, 0x6e, 0xfa, 0xf4, 0xb8, 0x2a,
	0x00, 0x00, 0x00, 0xe7, 0xf4, 0xeb, 0xfe, 0x68, 0x65, 0x6c, 0x6c, 0x6f,
	0x48, 0xff, 0xc0, 0xeb, 0xfb, 0xb9, 0x0f, 0x08, 0x00, 0x00, 0xb8, 0xff,
	0x01, 0x00, 0x00, 0x31, 0xd2, 0x0f, 0x30, 0xb9, 0x3e, 0x08, 0x00, 0x00,
	0xb8, 0x0b, 0x00, 0x00, 0x00, 0x0f, 0x30, 0xb9, 0x32, 0x08, 0x00, 0x00,
	0xb8, 0x40, 0x00, 0x02, 0x00, 0x0f, 0x30, 0xb9, 0x38, 0x08, 0x00, 0x00,
	0xb8, 0x40, 0x42, 0x0f, 0x00, 0x0f, 0x30, 0xfb, 0xf4, 0xeb, 0xfd, 0x50,
	0x51, 0x52, 0xf0, 0xff, 0x04, 0x25, 0x00, 0x80, 0x00, 0x00, 0x8b, 0x04,
	0x25, 0x00, 0x80, 0x00, 0x00, 0xe7, 0x21, 0xb9, 0x0b, 0x08, 0x00, 0x00,
	0x31, 0xc0, 0x31, 0xd2, 0x0f, 0x30, 0x5a, 0x59, 0x58, 0x48, 0xcf, 0xb9,
	0xa0, 0x86, 0x01, 0x00, 0xf0, 0xff, 0x04, 0x25, 0x00, 0x80, 0x00, 0x00,
	0xff, 0xc9, 0x75, 0xf4, 0x89, 0xf0, 0xe7, 0x31, 0xf3, 0x90, 0x8b, 0x04,
	0x25, 0x00, 0x80, 0x00, 0x00, 0x39, 0xf8, 0x75, 0xf3, 0xe7, 0x32, 0xfa,
	0xf4, 0xeb, 0xfd,
	0xe6, 0x10, 0xeb, 0xfc,
}

// Guest layout (guest-physical == virtual: identity map of the first GiB).
const (
	guestRAM       = 2 << 20
	guestPML4      = 0x1000
	guestPDPT      = 0x2000
	guestPD        = 0x3000
	guestIDT       = 0x4000
	guestGDT       = 0x500
	guestCounter   = 0x8000
	guestCodeBase  = 0x10000
	guestStackTop  = 0x40000 // vCPU n uses guestStackTop - n*0x1000
	guestMMIO      = 0x10000000
	entryIO        = guestCodeBase + 0x00
	entryIOHlt     = guestCodeBase + 0x2d // the hlt
	entryLoop      = guestCodeBase + 0x3c
	entryTimer     = guestCodeBase + 0x41
	entryTimerISR  = guestCodeBase + 0x77
	entrySMP       = guestCodeBase + 0x9b
	entryOutLoop   = guestCodeBase + 0xc3
	timerVector    = 0x40
	smpIncrements  = 100000
	guestPoweroff  = 0xf4
	guestCPUStride = 0x1000
)

// buildGuest lays out page tables, GDT, IDT and the code in mem.
func buildGuest(mem []byte) {
	le := binary.LittleEndian
	le.PutUint64(mem[guestPML4:], guestPDPT|3) // present, writable
	le.PutUint64(mem[guestPDPT:], guestPD|3)
	for i := uint64(0); i < 512; i++ { // 512 x 2 MiB: present, writable, PS
		le.PutUint64(mem[guestPD+8*i:], i<<21|0x83)
	}
	le.PutUint64(mem[guestGDT+0:], 0)
	le.PutUint64(mem[guestGDT+8:], 0x00af9a000000ffff)  // 0x08: 64-bit code
	le.PutUint64(mem[guestGDT+16:], 0x00cf92000000ffff) // 0x10: data
	// IDT gate for the timer vector: 64-bit interrupt gate, selector 0x08.
	g := mem[guestIDT+16*timerVector:]
	isr := uint64(entryTimerISR)
	le.PutUint16(g[0:], uint16(isr))
	le.PutUint16(g[2:], 0x08)
	g[4] = 0
	g[5] = 0x8e // present, DPL 0, interrupt gate
	le.PutUint16(g[6:], uint16(isr>>16))
	le.PutUint32(g[8:], uint32(isr>>32))
	copy(mem[guestCodeBase:], guestCode)
}

// longMode puts s into 64-bit mode over the guest's tables, keeping what
// KVM set up that we do not choose (APIC base, interrupt bitmap).
func longMode(s *engine.Sregs) {
	code := engine.Segment{Limit: 0xffffffff, Selector: 0x08, Type: 0xb, Present: 1, S: 1, L: 1, G: 1}
	data := engine.Segment{Limit: 0xffffffff, Selector: 0x10, Type: 0x3, Present: 1, S: 1, DB: 1, G: 1}
	s.CS = code
	s.DS, s.ES, s.FS, s.GS, s.SS = data, data, data, data, data
	s.TR = engine.Segment{Limit: 0x67, Type: 0xb, Present: 1} // busy 64-bit TSS (VMX insists)
	s.LDT = engine.Segment{Type: 0x2, Present: 1, Unusable: 1}
	s.GDT = engine.DTable{Base: guestGDT, Limit: 23}
	s.IDT = engine.DTable{Base: guestIDT, Limit: 0xfff}
	s.CR0 = 0x80010031 // PG | WP | NE | ET | PE
	s.CR3 = guestPML4
	s.CR4 = 0x220  // OSFXSR | PAE
	s.EFER = 0x500 // LMA | LME
}

// TestGuestCodeDecodes checks the hand-assembled bytes against the listing
// above, so a mistyped byte is caught without /dev/kvm.
func TestGuestCodeDecodes(t *testing.T) {
	want := map[int]string{
		entryIO - guestCodeBase:       "MOV AL, 0xab",
		entryIOHlt - guestCodeBase:    "HLT",
		entryLoop - guestCodeBase:     "INC RAX",
		entryTimer - guestCodeBase:    "MOV ECX, 0x80f",
		entryTimerISR - guestCodeBase: "PUSH RAX",
		entrySMP - guestCodeBase:      "MOV ECX, 0x186a0",
		entryOutLoop - guestCodeBase:  "OUT 0x10, AL",
	}
	seen := 0
	for off := 0; off < len(guestCode); {
		if off == 0x37 { // msg: data, not code
			off += 5
			continue
		}
		in, err := x86asm.Decode(guestCode[off:], 64)
		if err != nil {
			t.Fatalf("offset %#x: %v", off, err)
		}
		if w, ok := want[off]; ok {
			if got := in.String(); !strings.EqualFold(got, w) {
				t.Errorf("offset %#x: %q, want %q", off, got, w)
			}
			seen++
		}
		off += in.Len
	}
	if seen != len(want) {
		t.Errorf("only %d of %d entry points fall on instruction boundaries", seen, len(want))
	}
}
