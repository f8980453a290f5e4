// SPDX-License-Identifier: GPL-2.0
/*
 * sched.c: kernel threads, per-CPU round-robin run queues, preemption from
 * the timer tick, timed sleeps and wakeups.
 *
 * Tasks never migrate: a task runs on the CPU it was created on, so per-CPU
 * data read through %gs stays valid across preemption. Each run queue has
 * a lock, always taken with interrupts off; schedule() holds it across
 * klp_switch_to() and the resumed side releases it (schedule_tail() for a
 * task's first run), as Linux does with finish_task_switch().
 */
#include "kernel.h"

_Static_assert(__builtin_offsetof(struct task, state) == TASK_STATE, "task.state");
_Static_assert(__builtin_offsetof(struct task, pid) == TASK_PID, "task.pid");
_Static_assert(__builtin_offsetof(struct task, name) == TASK_NAME, "task.name");
_Static_assert(__builtin_offsetof(struct task, saved_rsp) == TASK_SAVED_RSP, "task.saved_rsp");
_Static_assert(__builtin_offsetof(struct task, saved_rbp) == TASK_SAVED_RBP, "task.saved_rbp");
_Static_assert(__builtin_offsetof(struct task, saved_rip) == TASK_SAVED_RIP, "task.saved_rip");
_Static_assert(__builtin_offsetof(struct task, stack_base) == TASK_STACK_BASE, "task.stack_base");
_Static_assert(__builtin_offsetof(struct task, stack_size) == TASK_STACK_SIZE, "task.stack_size");
_Static_assert(__builtin_offsetof(struct task, on_cpu) == TASK_ON_CPU, "task.on_cpu");
_Static_assert(__builtin_offsetof(struct task, cpu) == TASK_CPU, "task.cpu");
_Static_assert(__builtin_offsetof(struct percpu, self) == 0, "percpu.self");

struct percpu percpu[KLP_MAX_CPUS];
struct task task_table[KLP_MAX_TASKS];
uint64_t cpu_current_task[KLP_MAX_CPUS];
static spinlock_t task_table_lock = SPINLOCK_INIT;
volatile unsigned long jiffies; /* ms since boot (HZ 1000), kernel_api.h */
static uint32_t next_pid = 1;
extern char boot_stacks[];

notrace void spin_lock(spinlock_t *l)
{
	for (;;) {
		if (!__atomic_exchange_n(&l->locked, 1, __ATOMIC_ACQUIRE))
			break;
		while (READ_ONCE(l->locked))
			cpu_relax();
	}
}

notrace void spin_unlock(spinlock_t *l) { __atomic_store_n(&l->locked, 0, __ATOMIC_RELEASE); }

notrace uint64_t spin_lock_irqsave(spinlock_t *l)
{
	uint64_t f = irq_save();
	spin_lock(l);
	return f;
}

notrace void spin_unlock_irqrestore(spinlock_t *l, uint64_t flags)
{
	spin_unlock(l);
	irq_restore(flags);
}

static notrace void rq_enqueue(struct runqueue *rq, struct task *t)
{
	if (t->on_rq || t->is_idle)
		return;
	t->on_rq = 1;
	t->rq_next = NULL;
	if (rq->tail)
		rq->tail->rq_next = t;
	else
		rq->head = t;
	rq->tail = t;
	rq->nr_running++;
}

static notrace struct task *rq_dequeue(struct runqueue *rq)
{
	struct task *t = rq->head;
	if (!t)
		return NULL;
	rq->head = t->rq_next;
	if (!rq->head)
		rq->tail = NULL;
	t->rq_next = NULL;
	t->on_rq = 0;
	rq->nr_running--;
	return t;
}

static notrace void timer_add(struct runqueue *rq, struct task *t)
{
	if (t->on_timer)
		return;
	t->on_timer = 1;
	t->timer_next = rq->sleepers;
	rq->sleepers = t;
}

/*
 * sched_init_cpu: turns the boot context of this CPU into its idle task
 * (slot cpu of the task table, stack = its boot stack).
 */
notrace void sched_init_cpu(unsigned int cpu)
{
	struct percpu *pc = &percpu[cpu];
	struct task *idle = &task_table[cpu];
	idle->state = KLP_TASK_RUNNING;
	idle->pid = 0;
	snprintf(idle->name, sizeof(idle->name), "idle/%u", cpu);
	idle->stack_base = (uint64_t)boot_stacks + (uint64_t)cpu * BOOT_STACK_SIZE;
	idle->stack_size = BOOT_STACK_SIZE;
	idle->cpu = cpu;
	idle->on_cpu = cpu;
	idle->is_idle = 1;
	idle->slice = TIME_SLICE_TICKS;
	pc->idle = idle;
	pc->current = idle;
	WRITE_ONCE(cpu_current_task[cpu], (uint64_t)idle);
}

/* Reserve the idle slots so kthread_create never hands them out. */
notrace void sched_init(unsigned int ncpus)
{
	uint32_t n = ncpus > KLP_MAX_CPUS ? KLP_MAX_CPUS : ncpus;
	for (unsigned int i = 0; i < KLP_MAX_CPUS; i++) {
		task_table[i].state = i < n ? KLP_TASK_RUNNING : KLP_TASK_UNUSED;
		task_table[i].on_cpu = i < n ? (int32_t)i : -1;
		task_table[i].is_idle = 1;
	}
	klp_guest_abi.nr_tasks = n;
}

notrace void schedule(void)
{
	struct percpu *pc = this_cpu();
	struct runqueue *rq = &pc->rq;
	uint64_t flags = spin_lock_irqsave(&rq->lock);
	struct task *prev = pc->current;
	pc->need_resched = 0;
	if (prev->state == KLP_TASK_RUNNING && !prev->is_idle)
		rq_enqueue(rq, prev);
	struct task *next = rq_dequeue(rq);
	if (!next)
		next = pc->idle;
	next->slice = TIME_SLICE_TICKS;
	if (next != prev) {
		pc->ctx_switches++;
		next->nr_switches++;
		next->on_cpu = (int32_t)pc->cpu;
		pc->current = next;
		WRITE_ONCE(cpu_current_task[pc->cpu], (uint64_t)next);
		klp_switch_to(prev, next);
		/* back in prev, possibly much later: this CPU's rq is locked */
		pc = this_cpu();
		rq = &pc->rq;
	}
	spin_unlock_irqrestore(&rq->lock, flags);
}

/* schedule_tail: a new task's first code, from klp_task_start. */
notrace void schedule_tail(void)
{
	spin_unlock(&this_cpu()->rq.lock);
	irq_enable();
}

void yield(void) { schedule(); }

notrace void wake_up_process(struct task *t)
{
	if (!t || t->cpu >= KLP_MAX_CPUS)
		return;
	struct percpu *tp = &percpu[t->cpu];
	uint64_t f = spin_lock_irqsave(&tp->rq.lock);
	int kick = 0;
	if (t->state == KLP_TASK_SLEEPING) {
		WRITE_ONCE(t->state, KLP_TASK_RUNNING);
		t->wait_reason = NULL;
		if (tp->current != t) {
			rq_enqueue(&tp->rq, t);
			kick = tp->current == tp->idle;
		}
	}
	spin_unlock(&tp->rq.lock);
	if (kick) {
		if (t->cpu == this_cpu()->cpu)
			this_cpu()->need_resched = 1;
		else
			apic_send_ipi(t->cpu, VEC_RESCHED);
	}
	irq_restore(f);
}

/*
 * sleep_until: sleep until woken or until deadline_ns (0: no deadline).
 * Wakeups may be spurious: callers loop on their condition.
 */
void sleep_until(uint64_t deadline_ns, const char *why)
{
	struct percpu *pc = this_cpu();
	struct task *t = pc->current;
	uint64_t f = spin_lock_irqsave(&pc->rq.lock);
	if (deadline_ns) {
		t->wake_at = deadline_ns;
		timer_add(&pc->rq, t);
	}
	t->wait_reason = why;
	WRITE_ONCE(t->state, KLP_TASK_SLEEPING);
	spin_unlock_irqrestore(&pc->rq.lock, f);
	schedule();
}

void msleep(unsigned int ms)
{
	uint64_t end = ktime_get_ns() + (uint64_t)ms * NSEC_PER_MSEC;
	while (ktime_get_ns() < end)
		sleep_until(end, "msleep");
}

/* sched_tick: timer interrupt on this CPU (interrupts off). */
notrace void sched_tick(void)
{
	struct percpu *pc = this_cpu();
	struct runqueue *rq = &pc->rq;
	struct task *cur = pc->current;
	pc->ticks++;
	if (pc->cpu == 0)
		klp_guest_abi.ticks = pc->ticks;
	if (cur == pc->idle)
		pc->idle_ticks++;
	else
		cur->run_ticks++;
	uint64_t now = ktime_get_ns();
	if (pc->cpu == 0) /* from the clock, not the tick count: a slow emulator merges ticks */
		WRITE_ONCE(jiffies, now / NSEC_PER_MSEC);
	spin_lock(&rq->lock);
	struct task **pp = &rq->sleepers;
	while (*pp) {
		struct task *t = *pp;
		if (t->wake_at <= now) {
			*pp = t->timer_next;
			t->timer_next = NULL;
			t->on_timer = 0;
			if (t->state == KLP_TASK_SLEEPING) {
				t->state = KLP_TASK_RUNNING;
				t->wait_reason = NULL;
				if (t != cur)
					rq_enqueue(rq, t);
			}
			continue;
		}
		pp = &t->timer_next;
	}
	if (--cur->slice <= 0 || (cur == pc->idle && rq->head))
		pc->need_resched = 1;
	spin_unlock(&rq->lock);
	if (pc->need_resched)
		schedule();
}

/* sched_ipi: another CPU made a task runnable here. */
notrace void sched_ipi(void)
{
	struct percpu *pc = this_cpu();
	if (pc->current == pc->idle)
		schedule();
	else
		pc->need_resched = 1;
}

notrace __noreturn void cpu_idle_loop(void)
{
	for (;;) {
		irq_disable();
		struct percpu *pc = this_cpu();
		if (READ_ONCE(pc->rq.head) || pc->need_resched) {
			irq_enable();
			schedule();
			continue;
		}
		/* sti;hlt is atomic: an interrupt arriving now still ends the hlt */
		__asm__ __volatile__("sti; hlt" ::: "memory");
	}
}

static void *stack_alloc(struct task *t)
{
	if (!t->stack_base) {
		void *s = kmalloc_pages(KLP_STACK_SIZE);
		if (!s)
			return NULL;
		t->stack_base = (uint64_t)s;
		t->stack_size = KLP_STACK_SIZE;
	}
	return (void *)t->stack_base;
}

struct task *kthread_create_on(unsigned int cpu, void (*fn)(void *), void *arg, const char *name)
{
	if (cpu >= nr_cpus_online)
		cpu = 0;
	uint64_t f = spin_lock_irqsave(&task_table_lock);
	struct task *t = NULL;
	for (unsigned int i = 0; i < KLP_MAX_TASKS; i++) {
		struct task *c = &task_table[i];
		if (c->is_idle)
			continue;
		/* a dead task's stack is free once it has switched out for good */
		if (c->state == KLP_TASK_UNUSED || (c->state == KLP_TASK_DEAD && READ_ONCE(c->on_cpu) == -1)) {
			t = c;
			if (i + 1 > klp_guest_abi.nr_tasks)
				klp_guest_abi.nr_tasks = i + 1;
			break;
		}
	}
	if (!t || !stack_alloc(t)) {
		spin_unlock_irqrestore(&task_table_lock, f);
		printk("kthread_create: no task slot or stack for %s\n", name);
		return NULL;
	}
	uint64_t base = t->stack_base, size = t->stack_size;
	memset(t, 0, sizeof(*t));
	t->stack_base = base;
	t->stack_size = size;
	t->pid = next_pid++;
	strlcpy(t->name, name, sizeof(t->name));
	t->cpu = cpu;
	t->on_cpu = -1;
	t->fn = fn;
	t->arg = arg;
	/*
	 * Initial stack as klp_switch_to leaves it: r15 r14 r13 r12 rbx rbp,
	 * then the return address klp_task_start, placed so that RSP is
	 * 16-byte aligned after that "ret" (as before a call).
	 */
	uint64_t *top = (uint64_t *)(base + size);
	top[-1] = 0;
	top[-2] = 0;
	top[-3] = (uint64_t)klp_task_start;
	top[-4] = 0;                /* rbp: ends the frame chain */
	top[-5] = (uint64_t)fn;     /* rbx */
	top[-6] = (uint64_t)arg;    /* r12 */
	top[-7] = 0;                /* r13 */
	top[-8] = 0;                /* r14 */
	top[-9] = 0;                /* r15 */
	t->saved_rsp = (uint64_t)&top[-9];
	t->saved_rbp = 0;
	extern char klp_switch_resume[];
	t->saved_rip = (uint64_t)klp_switch_resume;
	spin_unlock_irqrestore(&task_table_lock, f);

	struct percpu *tp = &percpu[cpu];
	f = spin_lock_irqsave(&tp->rq.lock);
	WRITE_ONCE(t->state, KLP_TASK_RUNNING);
	rq_enqueue(&tp->rq, t);
	int kick = tp->current == tp->idle;
	spin_unlock(&tp->rq.lock);
	if (kick && cpu != this_cpu()->cpu)
		apic_send_ipi(cpu, VEC_RESCHED);
	irq_restore(f);
	return t;
}

notrace __noreturn void kthread_exit(void)
{
	struct percpu *pc = this_cpu();
	struct task *t = pc->current;
	uint64_t f = spin_lock_irqsave(&pc->rq.lock);
	/* off the timer list: the slot may be reused by another CPU */
	for (struct task **pp = &pc->rq.sleepers; *pp; pp = &(*pp)->timer_next) {
		if (*pp == t) {
			*pp = t->timer_next;
			break;
		}
	}
	t->on_timer = 0;
	t->timer_next = NULL;
	WRITE_ONCE(t->state, KLP_TASK_DEAD);
	spin_unlock(&pc->rq.lock);
	(void)f;
	schedule();
	panic("dead task %u scheduled again", pc->current->pid);
}

struct task *task_by_pid(uint32_t pid)
{
	for (unsigned int i = 0; i < KLP_MAX_TASKS; i++) {
		struct task *t = &task_table[i];
		if (t->state != KLP_TASK_UNUSED && t->state != KLP_TASK_DEAD && t->pid == pid && !(pid == 0 && !t->is_idle))
			return t;
	}
	return NULL;
}

uint32_t nr_tasks_alive(void)
{
	uint32_t n = 0;
	for (unsigned int i = 0; i < KLP_MAX_TASKS; i++)
		if (task_table[i].state == KLP_TASK_RUNNING || task_table[i].state == KLP_TASK_SLEEPING)
			n++;
	return n;
}

uint64_t sched_ctx_switches_total(void)
{
	uint64_t n = 0;
	for (unsigned int i = 0; i < KLP_MAX_CPUS; i++)
		n += percpu[i].ctx_switches;
	return n;
}

void init_completion(struct completion *c)
{
	c->done = 0;
	c->waiter = NULL;
}

void complete(struct completion *c)
{
	__atomic_store_n(&c->done, 1, __ATOMIC_SEQ_CST);
	struct task *w = READ_ONCE(c->waiter);
	if (w)
		wake_up_process(w);
}

int wait_for_completion_timeout(struct completion *c, uint64_t timeout_ns)
{
	uint64_t deadline = timeout_ns ? ktime_get_ns() + timeout_ns : 0;
	WRITE_ONCE(c->waiter, current_task());
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	while (!READ_ONCE(c->done)) {
		if (deadline && ktime_get_ns() >= deadline)
			break;
		sleep_until(deadline, "completion");
	}
	WRITE_ONCE(c->waiter, NULL);
	return READ_ONCE(c->done) ? 0 : -ETIMEDOUT;
}
