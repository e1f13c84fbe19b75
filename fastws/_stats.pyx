# cython: language_level=3
"""Endpoint counters read at scrape time (the struct and its theory: _stats.pxd)."""

#: The HTTP statuses counted one by one when a handshake is refused (others count as "other").
STATUSES = tuple(STATUS_CODES[i] for i in range(N_STATUS - 1))


cdef list _cumulative(const unsigned long long* b, const double* bounds, int n):
    """Prometheus-style cumulative buckets: [(upper bound, count <= bound), ..., (inf, total)]."""
    cdef list out = []
    cdef unsigned long long acc = 0
    cdef int i
    for i in range(n + 1):
        acc += b[i]
        out.append((bounds[i] if i < n else float("inf"), acc))
    return out


cdef dict snapshot(const Stats* st):
    """The counters and histograms as a dict of plain numbers (Endpoint.stats() adds "active")."""
    cdef int i
    codes = {}
    for i in range(N_CODES):
        if st.close_codes[i]:
            codes[str(1000 + i) if i < 16 else ("app" if i == 16 else "other")] = st.close_codes[i]
    statuses = {}
    for i in range(N_STATUS):
        if st.statuses[i]:
            statuses[str(STATUS_CODES[i]) if i < N_STATUS - 1 else "other"] = st.statuses[i]
    lat_count = 0
    for i in range(N_LAT):
        lat_count += st.lat_buckets[i]
    dur_count = 0
    for i in range(N_DUR):
        dur_count += st.dur_buckets[i]
    return {
        "attempted": st.attempted,
        "established": st.established,
        "failed": st.failed,
        "closed": st.closed,
        "active": 0,
        "http_requests": st.http_requests,
        "messages_received": st.msgs_in,
        "bytes_received": st.bytes_in,
        "messages_sent": st.msgs_out,
        "bytes_sent": st.bytes_out,
        "errors": st.errors,
        "auto_responses": st.auto_responses,
        "broadcasts": st.broadcasts,
        "broadcast_skipped": st.broadcast_skipped,
        "backpressure_closes": st.backpressure_closes,
        "close_codes": codes,
        "refused": statuses,
        "latency": {"buckets": _cumulative(st.lat_buckets, LAT_BOUNDS, N_LAT - 1),
                    "sum": st.lat_sum, "count": lat_count},
        "duration": {"buckets": _cumulative(st.dur_buckets, DUR_BOUNDS, N_DUR - 1),
                     "sum": st.dur_sum, "count": dur_count},
    }
