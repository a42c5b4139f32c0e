// SPDX-License-Identifier: GPL-2.0
/*
 * rwx-helper: an anonymous read-write-execute mapping holding real x86-64
 * (or arm64) code, kept alive, for mshot's malfind-style check. Runs the code
 * once to show it is code, prints where it is, then sleeps forever.
 */
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#if defined(__aarch64__)
/* mov w0, #0x2a; ret */
static const unsigned char code[] = {
	0x40, 0x05, 0x80, 0x52, 0xc0, 0x03, 0x5f, 0xd6,
};
#else
/* push rbp; mov rbp,rsp; mov eax,0x2a; pop rbp; ret */
static const unsigned char code[] = {
	0x55, 0x48, 0x89, 0xe5, 0xb8, 0x2a, 0x00, 0x00, 0x00, 0x5d, 0xc3,
};
#endif
/* In the first 64 bytes, where dumps of a suspicious mapping look. */
#define MARKER_AT 0x20
static const char marker[] = "MSHOT-RWX-HELPER";

int main(void)
{
	unsigned char *page = mmap(NULL, 4096, PROT_READ | PROT_WRITE | PROT_EXEC,
				   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	int (*fn)(void);

	if (page == MAP_FAILED) {
		perror("rwx-helper: mmap");
		return 1;
	}
	memcpy(page, code, sizeof(code));
	memcpy(page + MARKER_AT, marker, sizeof(marker));
	/* arm64: the instruction cache does not see the data writes by itself. */
	__builtin___clear_cache((char *)page, (char *)page + sizeof(code));
	fn = (int (*)(void))(void *)page;
	printf("rwx-helper: pid %d, code at %p returned %d\n", (int)getpid(), (void *)page, fn());
	fflush(stdout);
	for (;;)
		pause();
}
