# cython: language_level=3
"""Endpoint counters: a C struct per endpoint, a few integer additions per message.

Theory of operation
-------------------
The hot path never creates a Python object to count something: each
:class:`~fastws._endpoint.Endpoint` embeds one ``Stats`` struct, and the
connection, the transport and ``broadcast()`` add to its fields directly
(``ep._st.msgs_in += 1``). Histograms are fixed bucket arrays; the bounds are
static C arrays compiled into every module that cimports this file, so
``bucket()`` inlines into the caller.

Nothing here knows about Prometheus: ``snapshot()`` turns the struct into a dict
of plain numbers when metrics are scraped (fastws.metrics renders it).
"""

cdef enum:
    N_LAT = 14              # message latency buckets (+Inf is the last)
    N_DUR = 10              # connection duration buckets (+Inf is the last)
    N_CODES = 18            # close codes 1000..1015, 3000-4999 ("app"), other
    N_STATUS = 12           # refused-handshake statuses (see STATUSES in _stats.pyx), other

cdef extern from *:
    """
    static const double fastws_lat_bounds[13] = {0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                                                 0.005, 0.01, 0.025, 0.1, 0.5, 1.0};
    static const double fastws_dur_bounds[9] = {0.1, 1.0, 5.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0};
    static const int fastws_status_codes[11] = {400, 401, 403, 404, 405, 426, 429, 431, 500, 502, 503};
    """
    const double* LAT_BOUNDS "fastws_lat_bounds"
    const double* DUR_BOUNDS "fastws_dur_bounds"
    const int* STATUS_CODES "fastws_status_codes"

ctypedef struct Stats:
    unsigned long long attempted        # WebSocket upgrade requests
    unsigned long long established      # opening handshakes completed
    unsigned long long failed           # upgrade requests that never reached OPEN
    unsigned long long closed           # established connections that ended
    unsigned long long http_requests    # plain HTTP requests answered
    unsigned long long msgs_in
    unsigned long long bytes_in
    unsigned long long msgs_out
    unsigned long long bytes_out
    unsigned long long errors           # connections failed for a protocol violation or an error
    unsigned long long auto_responses
    unsigned long long broadcasts
    unsigned long long broadcast_skipped
    unsigned long long backpressure_closes  # connections dropped for a peer that does not read (BufferFull)
    unsigned long long close_codes[N_CODES]
    unsigned long long statuses[N_STATUS]
    unsigned long long lat_buckets[N_LAT]
    double lat_sum
    unsigned long long dur_buckets[N_DUR]
    double dur_sum


cdef inline int bucket(const double* bounds, int n, double v) noexcept nogil:
    cdef int i
    for i in range(n):
        if v <= bounds[i]:
            return i
    return n


cdef inline int code_index(int code) noexcept nogil:
    if 1000 <= code <= 1015:
        return code - 1000
    if 3000 <= code <= 4999:
        return 16
    return 17


cdef inline void count_latency(Stats* st, double seconds) noexcept nogil:
    """One message handled ``seconds`` after it was read."""
    st.lat_buckets[bucket(LAT_BOUNDS, N_LAT - 1, seconds)] += 1
    st.lat_sum += seconds


cdef inline void count_duration(Stats* st, double seconds) noexcept nogil:
    """One established connection ended after ``seconds``."""
    st.dur_buckets[bucket(DUR_BOUNDS, N_DUR - 1, seconds)] += 1
    st.dur_sum += seconds


cdef inline void count_refused(Stats* st, int status) noexcept nogil:
    """One handshake refused with HTTP ``status``."""
    cdef int i
    for i in range(N_STATUS - 1):
        if STATUS_CODES[i] == status:
            st.statuses[i] += 1
            return
    st.statuses[N_STATUS - 1] += 1


cdef dict snapshot(const Stats* st)
