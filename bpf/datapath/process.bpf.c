// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Process events: the first runtime-visibility programs, and the loader's
 * tracing hook kinds (layout and semantics in myelin_abi.h).
 *
 *   process_exec  tp_btf/sched_process_exec           a task executed a file
 *   process_exit  tracepoint/sched/sched_process_exit a thread-group leader exited
 *
 * Both report the task's cgroup id, which user space maps to a pod.
 * Kernel structures are read with CO-RE: the few fields used are declared
 * below with preserve_access_index, and libbpf relocates their offsets
 * against the running kernel's BTF at load time.
 */
#include "lib/common.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct task_struct {
	int pid;
	int tgid;
	int exit_code;
	struct task_struct *real_parent;
} __attribute__((preserve_access_index));

struct linux_binprm {
	const char *filename;
} __attribute__((preserve_access_index));

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
	MYELIN_PINNED;
} process_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
	MYELIN_PINNED;
} process_events_lost SEC(".maps");

/* BTF anchor: the event type for the Rust skeleton. */
__attribute__((noinline)) int myelin_abi_btf_anchor_process(struct process_event *e)
{
	return (int)e->type;
}

static __always_inline struct process_event *process_event_reserve(__u32 type)
{
	struct process_event *e = bpf_ringbuf_reserve(&process_events, sizeof(*e), 0);
	__u64 uid_gid;
	__u32 zero = 0;

	if (!e) {
		__u64 *lost = bpf_map_lookup_elem(&process_events_lost, &zero);

		if (lost)
			*lost += 1;
		return NULL;
	}
	uid_gid = bpf_get_current_uid_gid();
	e->ktime_ns = bpf_ktime_get_ns();
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->type = type;
	e->uid = (__u32)uid_gid;
	e->gid = (__u32)(uid_gid >> 32);
	e->exit_code = 0;
	e->_pad = 0;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	return e;
}

static __always_inline void process_ids(struct process_event *e, struct task_struct *task)
{
	e->pid = (__u32)BPF_CORE_READ(task, tgid);
	e->tid = (__u32)BPF_CORE_READ(task, pid);
	e->ppid = (__u32)BPF_CORE_READ(task, real_parent, tgid);
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(process_exec, struct task_struct *task, int old_pid, struct linux_binprm *bprm)
{
	struct process_event *e = process_event_reserve(PROCESS_EVENT_EXEC);
	const char *filename;

	if (!e)
		return 0;
	process_ids(e, task);
	filename = BPF_CORE_READ(bprm, filename);
	if (bpf_probe_read_kernel_str(e->filename, sizeof(e->filename), filename) < 0)
		e->filename[0] = 0;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tracepoint/sched/sched_process_exit")
int process_exit(void *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct task_struct *task;
	struct process_event *e;

	/* Threads other than the leader exiting are not the process exiting. */
	if ((__u32)pid_tgid != (__u32)(pid_tgid >> 32))
		return 0;
	e = process_event_reserve(PROCESS_EVENT_EXIT);
	if (!e)
		return 0;
	task = bpf_get_current_task_btf();
	process_ids(e, task);
	e->exit_code = (__u32)BPF_CORE_READ(task, exit_code);
	e->filename[0] = 0;
	bpf_ringbuf_submit(e, 0);
	return 0;
}
