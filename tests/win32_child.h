/* Child processes for the Win32 suites (test_shm_win32, test_channel_win32):
 * start one with its stdout on a pipe, read its lines, wait for its exit
 * code.  Windows only; include after test_util.h. */
#ifndef MS_TEST_WIN32_CHILD_H
#define MS_TEST_WIN32_CHILD_H

#include <windows.h>

#include <string.h>

typedef struct child {
  PROCESS_INFORMATION pi;
  HANDLE out; /* read end of its stdout */
} child;

/* Starts cmdline (program and arguments, quoted as needed). */
static inline child child_start(char *cmdline) {
  SECURITY_ATTRIBUTES sa = {sizeof(sa), NULL, TRUE};
  HANDLE rd, wr;
  assert_true(CreatePipe(&rd, &wr, &sa, 0));
  SetHandleInformation(rd, HANDLE_FLAG_INHERIT, 0);
  STARTUPINFOA si;
  memset(&si, 0, sizeof(si));
  si.cb = sizeof(si);
  si.dwFlags = STARTF_USESTDHANDLES;
  si.hStdInput = GetStdHandle(STD_INPUT_HANDLE);
  si.hStdOutput = wr;
  si.hStdError = GetStdHandle(STD_ERROR_HANDLE);
  child c;
  memset(&c, 0, sizeof(c));
  assert_true(CreateProcessA(NULL, cmdline, NULL, NULL, TRUE, 0, NULL, NULL,
                             &si, &c.pi));
  CloseHandle(wr);
  c.out = rd;
  return c;
}

/* One line of the child's output, without its line end. */
static inline void read_line(child *c, char *buf, size_t len) {
  size_t n = 0;
  DWORD got = 0;
  while (n + 1 < len && ReadFile(c->out, buf + n, 1, &got, NULL) && got == 1 &&
         buf[n] != '\n')
    n++;
  buf[n] = '\0';
  if (n > 0 && buf[n - 1] == '\r')
    buf[n - 1] = '\0';
}

/* Waits for the child (a hang past timeout_ms fails the test) and returns
 * its exit code. */
static inline DWORD finish_within(child *c, DWORD timeout_ms) {
  assert_int_equal(WaitForSingleObject(c->pi.hProcess, timeout_ms),
                   WAIT_OBJECT_0);
  DWORD code = 0;
  GetExitCodeProcess(c->pi.hProcess, &code);
  CloseHandle(c->pi.hProcess);
  CloseHandle(c->pi.hThread);
  CloseHandle(c->out);
  return code;
}

#endif
