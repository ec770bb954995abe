#ifndef CCONTINUON_SYSTEM_H
#define CCONTINUON_SYSTEM_H

#include <stddef.h>
#include <stdint.h>

/// Starts writeback of a file range without waiting for it (Linux sync_file_range with SYNC_FILE_RANGE_WRITE),
/// so that a later fsync has little left to do. Returns 0, or -1 with errno set; elsewhere a no-op returning 0.
int csystem_start_writeback(int fd, int64_t offset, int64_t count);

/// Fixes glibc's mmap threshold at `bytes` (mallopt M_MMAP_THRESHOLD), which also turns off its dynamic growth:
/// every allocation of at least `bytes` is its own mapping, returned to the system when freed. Returns 1 on
/// success, 0 on failure; elsewhere a no-op returning 0.
int csystem_fix_mmap_threshold(int bytes);

/// Whether this CPU has a CRC-32C instruction (x86-64 SSE 4.2, AArch64 CRC32): 1 or 0.
int csystem_has_crc32c_instruction(void);

/// Continues a CRC-32C (Castagnoli, reflected) over `count` bytes with the CPU's instruction. `crc` is the running
/// register (start with 0xFFFFFFFF; the checksum is its complement). Call only when
/// `csystem_has_crc32c_instruction()` is 1.
uint32_t csystem_crc32c_update(uint32_t crc, const void *bytes, size_t count);

#endif
