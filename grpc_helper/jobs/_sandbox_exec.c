/* Exec helper of the job runner: sandbox a new process, then exec the job. Built by _exec.py.
 *
 *   _sandbox_exec ERR_FD FLAGS UID GID CWD NCGROUPS CGROUP_PROCS... -- ARGV...
 *
 * The server starts it (subprocess.Popen: vfork + exec in C, new session) with the job's environment.
 * FLAGS is a string of letters:
 *   p  own PID namespace: this process (H) stays outside, waits for the job and ends the same way; its first
 *      child (I) is pid 1 of the namespace and reaps orphans; its second child (J, pid 2) becomes the job.
 *      When J ends, H kills I, so the kernel kills the rest of the namespace. Without p, H becomes the job.
 *   v  own view of processes: a fresh /proc, mounted by J in a new mount namespace (needs p)
 *   n  own network namespace: only the loopback interface, up
 *   t  private /tmp: a tmpfs in a new mount namespace
 *   u  change user: drop the supplementary groups, setresgid(GID), setresuid(UID)
 * The job's process then joins the cgroups (writes "0", itself, to each cgroup.procs) while still
 * privileged, changes user (u), sets no_new_privs, changes to CWD as the job's user and execs ARGV
 * (PATH search in the given environment). A failure before the exec is reported on ERR_FD as
 * "stage:errno:detail" with exit status 127; ERR_FD is close-on-exec, so EOF without a report tells the
 * server that the job was exec'd. With p, H first writes "pid:I\n" (I's pid outside the namespace).
 *
 * On x86-64 and aarch64 it is built without libc (raw system calls, own _start): a static glibc binary
 * spends ~0.5 ms in its start-up on small VMs, more than the rest of a job start. Elsewhere it is built
 * against libc with the same code.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/prctl.h>
#include <linux/sched.h>
#include <linux/sockios.h>
#include <linux/wait.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>

#if (defined(__x86_64__) || defined(__aarch64__)) && !defined(SANDBOX_EXEC_LIBC)
#define NOLIBC 1
#endif

typedef unsigned long size_t_;

#ifdef NOLIBC
static long sys6(long n, long a1, long a2, long a3, long a4, long a5, long a6) {
#if defined(__x86_64__)
    register long r10 __asm__("r10") = a4;
    register long r8 __asm__("r8") = a5;
    register long r9 __asm__("r9") = a6;
    long ret;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a1), "S"(a2), "d"(a3), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
#else
    register long x8 __asm__("x8") = n;
    register long x0 __asm__("x0") = a1;
    register long x1 __asm__("x1") = a2;
    register long x2 __asm__("x2") = a3;
    register long x3 __asm__("x3") = a4;
    register long x4 __asm__("x4") = a5;
    register long x5 __asm__("x5") = a6;
    __asm__ volatile("svc 0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4), "r"(x5) : "memory", "cc");
    return x0;
#endif
}

/* The compiler may call these for struct copies and zeroing. */
void *memset(void *d, int c, size_t_ n) {
    unsigned char *p = d;
    while (n--) *p++ = (unsigned char)c;
    return d;
}
void *memcpy(void *d, const void *s, size_t_ n) {
    unsigned char *p = d;
    const unsigned char *q = s;
    while (n--) *p++ = *q++;
    return d;
}
#else
#include <string.h>
#include <unistd.h>
static long sys6(long n, long a1, long a2, long a3, long a4, long a5, long a6) {
    long r = syscall(n, a1, a2, a3, a4, a5, a6);
    return r == -1 ? -errno : r;
}
#endif

#define S0(n) sys6(n, 0, 0, 0, 0, 0, 0)
#define S1(n, a) sys6(n, (long)(a), 0, 0, 0, 0, 0)
#define S2(n, a, b) sys6(n, (long)(a), (long)(b), 0, 0, 0, 0)
#define S3(n, a, b, c) sys6(n, (long)(a), (long)(b), (long)(c), 0, 0, 0)
#define S4(n, a, b, c, d) sys6(n, (long)(a), (long)(b), (long)(c), (long)(d), 0, 0)
#define S5(n, a, b, c, d, e) sys6(n, (long)(a), (long)(b), (long)(c), (long)(d), (long)(e), 0)

static __attribute__((noreturn)) void quit(int code) {
    for (;;) S1(SYS_exit_group, code);
}

static size_t_ len(const char *s) {
    size_t_ n = 0;
    while (s[n]) n++;
    return n;
}

static int same(const char *a, const char *b) {
    while (*a && *a == *b) a++, b++;
    return *a == *b;
}

static int has(const char *s, char c) {
    for (; *s; s++)
        if (*s == c) return 1;
    return 0;
}

static long number(const char *s) {
    long n = 0;
    int neg = *s == '-';
    if (neg) s++;
    for (; *s >= '0' && *s <= '9'; s++) n = n * 10 + (*s - '0');
    return neg ? -n : n;
}

static int err_fd = -1;

/* Report "stage:errno:detail" to the server and exit 127. */
static __attribute__((noreturn)) void fail(const char *stage, long err, const char *detail) {
    char buf[4200];
    size_t_ n = 0;
    for (const char *p = stage; *p && n < 32; p++) buf[n++] = *p;
    buf[n++] = ':';
    char digits[24];
    int d = 0;
    unsigned long e = (unsigned long)(err < 0 ? -err : err);
    do digits[d++] = (char)('0' + e % 10), e /= 10;
    while (e);
    while (d) buf[n++] = digits[--d];
    buf[n++] = ':';
    for (const char *p = detail; *p && n < sizeof buf; p++) buf[n++] = *p;
    if (err_fd >= 0) S3(SYS_write, err_fd, buf, n);
    quit(127);
}

static void check(long r, const char *stage, const char *detail) {
    if (r < 0) fail(stage, r, detail);
}

static void join_cgroups(int n, char **files) {
    for (int i = 0; i < n; i++) {
        long fd = S4(SYS_openat, AT_FDCWD, files[i], O_WRONLY | O_CLOEXEC, 0);
        check(fd, "cgroup", files[i]);
        long w = S3(SYS_write, fd, "0", 1);
        check(w, "cgroup", files[i]);
        S1(SYS_close, fd);
    }
}

static void loopback_up(void) {
    long s = S3(SYS_socket, AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    check(s, "sandbox", "socket for the loopback interface");
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_name[0] = 'l';
    ifr.ifr_name[1] = 'o';
    check(S3(SYS_ioctl, s, SIOCGIFFLAGS, &ifr), "sandbox", "loopback flags");
    ifr.ifr_flags |= IFF_UP;
    check(S3(SYS_ioctl, s, SIOCSIFFLAGS, &ifr), "sandbox", "loopback up");
    S1(SYS_close, s);
}

static long drop_user(long uid, long gid) {
    long r = S2(SYS_setgroups, 0, 0);
    if (r >= 0) r = S3(SYS_setresgid, gid, gid, gid);
    if (r >= 0) r = S3(SYS_setresuid, uid, uid, uid);
    return r;
}

/* execvp: PATH search in the job's environment (errors as glibc: EACCES wins, lookup misses go on). */
static __attribute__((noreturn)) void exec_job(char **argv, char **envp) {
    const char *file = argv[0];
    if (has(file, '/')) fail("exec", S3(SYS_execve, file, argv, envp), file);
    const char *path = "/bin:/usr/bin";
    for (char **e = envp; *e; e++)
        if ((*e)[0] == 'P' && (*e)[1] == 'A' && (*e)[2] == 'T' && (*e)[3] == 'H' && (*e)[4] == '=') path = *e + 5;
    size_t_ flen = len(file);
    long last = -ENOENT;
    int denied = 0;
    char buf[4096];
    for (const char *p = path;; p++) {
        const char *start = p;
        while (*p && *p != ':') p++;
        size_t_ dlen = (size_t_)(p - start);
        if (dlen + 1 + flen + 1 <= sizeof buf) {
            size_t_ n = 0;
            if (!dlen) buf[n++] = '.';
            for (size_t_ i = 0; i < dlen; i++) buf[n++] = start[i];
            buf[n++] = '/';
            for (size_t_ i = 0; i <= flen; i++) buf[n++] = file[i];
            last = S3(SYS_execve, buf, argv, envp);
            if (last == -EACCES) denied = 1;
            else if (last != -ENOENT && last != -ENOTDIR && last != -ESTALE && last != -ENODEV && last != -ETIMEDOUT)
                fail("exec", last, file);
        } else {
            last = -ENAMETOOLONG;
        }
        if (!*p) break;
    }
    fail("exec", denied ? -EACCES : last, file);
}

static unsigned long saved_mask; /* H's signal mask before it blocked everything */

/* The job itself: own /proc (view), cgroups (privileged), user, no_new_privs, cwd (as the job's user), exec. */
static __attribute__((noreturn)) void become_job(int view, int ncg, char **cgroups, int change_user, long uid, long gid,
                                                 const char *cwd, char **argv, char **envp) {
    S4(SYS_rt_sigprocmask, SIG_SETMASK, &saved_mask, 0, 8);
    if (view) check(S5(SYS_mount, "proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, 0), "sandbox", "mount /proc");
    join_cgroups(ncg, cgroups);
    if (change_user) check(drop_user(uid, gid), "user", "cannot change user");
    check(S5(SYS_prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "user", "no_new_privs");
    check(S1(SYS_chdir, cwd), "cwd", cwd);
    exec_job(argv, envp);
}

struct kernel_sigaction {
    void *handler;
    unsigned long flags;
    void *restorer;
    unsigned long mask;
};

/* Exit the way the job did: its exit code, or its signal (without a core dump). */
static __attribute__((noreturn)) void exit_like(int status) {
    int sig = status & 0x7f;
    if (sig && sig != 0x7f) {
        struct rlimit no_core = {0, 0};
        S4(SYS_prlimit64, 0, RLIMIT_CORE, &no_core, 0);
        struct kernel_sigaction dfl = {0, 0, 0, 0};
        S4(SYS_rt_sigaction, sig, &dfl, 0, 8);
        unsigned long set = 1UL << (sig - 1);
        S4(SYS_rt_sigprocmask, SIG_UNBLOCK, &set, 0, 8);
        S2(SYS_kill, S0(SYS_getpid), sig);
        quit(128 + sig);
    }
    quit((status >> 8) & 0xff);
}

static long fork_(long flags) {
    return S5(SYS_clone, flags | SIGCHLD, 0, 0, 0, 0);
}

/* I: pid 1 of the job's PID namespace, reaping the job's orphans until H kills it (from outside, only
 * SIGKILL reaches it). It runs as the job's user: nothing privileged is left in the job's reach. */
static __attribute__((noreturn)) void be_init(int change_user, long uid, long gid) {
    if (change_user) drop_user(uid, gid);
    unsigned long chld = 1UL << (SIGCHLD - 1); /* blocked, like every signal: waited for, not handled */
    for (;;) {
        int status;
        while (S4(SYS_wait4, -1, &status, WNOHANG | __WALL, 0) > 0) {
        }
        S4(SYS_rt_sigtimedwait, &chld, 0, 0, 8);
    }
}

/* Tell the server I's pid ("pid:N\n"): it waits for I's end, which comes after the rest of the namespace's,
 * even when H was killed first. */
static void report_pid(long pid) {
    char line[32] = "pid:";
    int n = 4, d = 0;
    char digits[24];
    for (long v = pid; v || !d; v /= 10) digits[d++] = (char)('0' + v % 10);
    while (d) line[n++] = digits[--d];
    line[n++] = '\n';
    S3(SYS_write, err_fd, line, n);
}

static int run(int argc, char **argv, char **envp) {
    if (argc < 9) return 127;
    err_fd = (int)number(argv[1]);
    if (S3(SYS_fcntl, err_fd, F_SETFD, FD_CLOEXEC) < 0) return 127;
    const char *flags = argv[2];
    long uid = number(argv[3]), gid = number(argv[4]);
    const char *cwd = argv[5];
    int ncg = (int)number(argv[6]);
    if (ncg < 0 || 8 + ncg >= argc || !same(argv[7 + ncg], "--")) fail("spec", EINVAL, "arguments");
    char **cgroups = argv + 7;
    char **job = argv + 8 + ncg;
    int pidns = has(flags, 'p'), view = has(flags, 'v'), net = has(flags, 'n'), tmp = has(flags, 't');
    int change_user = has(flags, 'u');

    long clone_flags = (pidns ? CLONE_NEWPID : 0) | (net ? CLONE_NEWNET : 0) | (view || tmp ? CLONE_NEWNS : 0);
    if (clone_flags) check(S1(SYS_unshare, clone_flags), "sandbox", "unshare");
    if (net) loopback_up();
    if (view || tmp) {
        check(S5(SYS_mount, 0, "/", 0, MS_REC | MS_PRIVATE, 0), "sandbox", "private mounts");
        if (tmp) check(S5(SYS_mount, "tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777"), "sandbox", "tmpfs on /tmp");
    }
    if (!pidns) become_job(0, ncg, cgroups, change_user, uid, gid, cwd, job, envp);

    /* H blocks every signal (the job gets the original mask back): a signal sent to the process group must
     * reach the job and not end H, which only waits and relays the job's end. */
    unsigned long all = ~0UL;
    S4(SYS_rt_sigprocmask, SIG_BLOCK, &all, &saved_mask, 8);
    /* I, the namespace's init, shares H's descriptor table: when H closes the error pipe and the job's
     * output, I holds none of them. */
    long init = fork_(CLONE_FILES);
    check(init, "sandbox", "fork");
    if (init == 0) be_init(change_user, uid, gid);
    report_pid(init);
    /* J gets its own copy of the descriptors; H then closes its error pipe at once, so the server sees EOF
     * as soon as J execs (a vfork would make it wait for H to be scheduled again). */
    long job_pid = fork_(0);
    if (job_pid == 0) become_job(view, ncg, cgroups, change_user, uid, gid, cwd, job, envp);
    if (job_pid < 0) {
        S2(SYS_kill, init, SIGKILL);
        fail("sandbox", job_pid, "fork");
    }
    for (int fd = 0; fd <= 2; fd++) S1(SYS_close, fd);
    S1(SYS_close, err_fd); /* the server sees EOF: the job was exec'd */
    int status = 0, init_status = 0;
    while (S4(SYS_wait4, job_pid, &status, 0, 0) == -EINTR) {
    }
    /* The job's main process ended: I's end makes the kernel kill and reap the rest of the namespace. */
    S2(SYS_kill, init, SIGKILL);
    while (S4(SYS_wait4, init, &init_status, 0, 0) == -EINTR) {
    }
    exit_like(status);
}

#ifdef NOLIBC
__attribute__((used, noreturn)) void start_c(long *sp) {
    int argc = (int)sp[0];
    char **argv = (char **)(sp + 1);
    quit(run(argc, argv, argv + argc + 1));
}
#if defined(__x86_64__)
__asm__(".text\n.global _start\n_start:\n xor %ebp,%ebp\n mov %rsp,%rdi\n and $-16,%rsp\n call start_c\n hlt\n");
#else
__asm__(".text\n.global _start\n_start:\n mov x29, #0\n mov x30, #0\n mov x0, sp\n bl start_c\n");
#endif
#else
int main(int argc, char **argv, char **envp) {
    return run(argc, argv, envp);
}
#endif
