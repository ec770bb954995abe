#ifndef CCONTINUON_SYSTEM_H
#define CCONTINUON_SYSTEM_H

#include <stdint.h>

/// Starts writeback of a file range without waiting for it (Linux sync_file_range with SYNC_FILE_RANGE_WRITE),
/// so that a later fsync has little left to do. Returns 0, or -1 with errno set; elsewhere a no-op returning 0.
int csystem_start_writeback(int fd, int64_t offset, int64_t count);

/// Fixes glibc's mmap threshold at `bytes` (mallopt M_MMAP_THRESHOLD), which also turns off its dynamic growth:
/// every allocation of at least `bytes` is its own mapping, returned to the system when freed. Returns 1 on
/// success, 0 on failure; elsewhere a no-op returning 0.
int csystem_fix_mmap_threshold(int bytes);

#endif
