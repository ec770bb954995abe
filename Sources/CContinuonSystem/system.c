#define _GNU_SOURCE
#include "ccontinuon_system.h"
#include <fcntl.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

int csystem_start_writeback(int fd, int64_t offset, int64_t count) {
#if defined(__linux__)
    return sync_file_range(fd, (off64_t)offset, (off64_t)count, SYNC_FILE_RANGE_WRITE);
#else
    (void)fd; (void)offset; (void)count;
    return 0;
#endif
}

int csystem_fix_mmap_threshold(int bytes) {
#if defined(__GLIBC__)
    return mallopt(M_MMAP_THRESHOLD, bytes);
#else
    (void)bytes;
    return 0;
#endif
}

#if defined(__x86_64__)
#include <nmmintrin.h>

int csystem_has_crc32c_instruction(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("sse4.2") ? 1 : 0;
}

__attribute__((target("sse4.2")))
uint32_t csystem_crc32c_update(uint32_t crc, const void *bytes, size_t count) {
    const unsigned char *p = bytes;
    uint64_t value = crc;
    while (count > 0 && ((uintptr_t)p & 7) != 0) {
        value = _mm_crc32_u8((uint32_t)value, *p++);
        count--;
    }
    while (count >= 8) {
        uint64_t word;
        __builtin_memcpy(&word, p, 8);
        value = _mm_crc32_u64(value, word);
        p += 8;
        count -= 8;
    }
    while (count > 0) {
        value = _mm_crc32_u8((uint32_t)value, *p++);
        count--;
    }
    return (uint32_t)value;
}

#elif defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#include <asm/hwcap.h>

int csystem_has_crc32c_instruction(void) {
    return (getauxval(AT_HWCAP) & HWCAP_CRC32) ? 1 : 0;
}

__attribute__((target("crc")))
uint32_t csystem_crc32c_update(uint32_t crc, const void *bytes, size_t count) {
    const unsigned char *p = bytes;
    while (count >= 8) {
        uint64_t word;
        __builtin_memcpy(&word, p, 8);
        crc = __builtin_arm_crc32cd(crc, word);
        p += 8;
        count -= 8;
    }
    while (count > 0) {
        crc = __builtin_arm_crc32cb(crc, *p++);
        count--;
    }
    return crc;
}

#else

int csystem_has_crc32c_instruction(void) { return 0; }

uint32_t csystem_crc32c_update(uint32_t crc, const void *bytes, size_t count) {
    (void)bytes; (void)count;
    return crc;
}

#endif
