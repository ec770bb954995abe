#ifndef CCONTINUON_SYSTEM_H
#define CCONTINUON_SYSTEM_H

#include <stdint.h>

/// Starts writeback of a file range without waiting for it (Linux sync_file_range with SYNC_FILE_RANGE_WRITE),
/// so that a later fsync has little left to do. Returns 0, or -1 with errno set; elsewhere a no-op returning 0.
int csystem_start_writeback(int fd, int64_t offset, int64_t count);

#endif
