import CContinuonSystem

/// Process-wide memory settings for processes that move large buffers (the uploader's chunks).
public enum MemoryTuning {
    /// Makes every allocation of at least `bytes` (default 1 MiB) its own mapping, returned to the system when
    /// freed. glibc otherwise raises that threshold as large blocks are freed, after which they come from the heap,
    /// which does not shrink: an uploader of 8 MiB chunks then peaks far above what it holds at any moment
    /// (measured: 88 MiB instead of 60 for a 256 MiB upload). Process-wide: call it once, early, in a process
    /// that uploads (`continuon-pack-net` does). No effect outside glibc.
    /// - Returns: whether the setting took effect.
    @discardableResult
    public static func returnLargeBuffersToTheSystem(threshold bytes: Int = 1 << 20) -> Bool {
        csystem_fix_mmap_threshold(Int32(clamping: bytes)) == 1
    }
}
