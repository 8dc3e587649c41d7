/* Helpers shared by the Win32 platform files (shm_region_win32.c,
 * shm_wait_win32.c) and nothing else.  Never included by portable code. */
#ifndef MS_INTERNAL_WIN32_H
#define MS_INTERNAL_WIN32_H

#include <windows.h>

/* A security descriptor granting all access to the current user only;
 * free *sd with LocalFree.  0 or MS_EACCES. */
int ms__win32_owner_only(SECURITY_ATTRIBUTES *sa, PSECURITY_DESCRIPTOR *sd);

#endif
