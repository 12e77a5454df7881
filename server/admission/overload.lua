-- llmrec's admission proxy: whether a call that finds every server slot busy may wait (haproxy.cfg runs
-- `llmrec_admit` on every call; llmrec.server.admission.Limits documents the settings).
--
-- A queue in front of the server absorbs bursts: at a load the server carries, calls that arrive together
-- wait a few milliseconds and are all answered. Under sustained overload the same queue is full all the time
-- and adds its whole length to the latency of every call it admits (at 3x the saturation rate a queue of 16
-- made the admitted p99 3-7x its value at half load). So the proxy works in two modes:
--
--   queueing    up to MAX_IN_FLIGHT calls at the server, up to MAX_QUEUE more wait (HAProxy's `timeout
--               queue` bounds the wait), the rest are refused. When three quarters of a full queue or more
--               have been waiting at every arrival for OVERLOAD_AFTER_MS (a burst at a load the server
--               carries drains well before that), the server is overloaded and the proxy switches to
--   overloaded  OVERLOAD_IN_FLIGHT calls at the server and OVERLOAD_QUEUE waiting, the rest refused at once:
--               an admitted call waits behind a few calls, not a full queue. Every WINDOW_MS it looks at the
--               calls of that window: when at least EXIT_SHARE of them found a server slot free, the server
--               keeps up again and the proxy goes back to queueing.
--
-- The exit asks for a free slot, not for an empty queue: while the server is overloaded a slot that frees is
-- taken at once by a waiting call, so arrivals find one free only when the load is below what the mode
-- serves (a share of 1 - load / capacity). With one waiting place, "no call waiting" is simply "admitted", and
-- a fast server admitted half of a 3x load: the mode left and re-entered every few hundred ms.
--
-- Each decision reads HAProxy's own counters at the call's arrival (calls at the server, calls waiting): a
-- few microseconds. One HAProxy thread (nbthread 1) runs it, so the state below needs no lock. Every switch is
-- logged (a warning in the proxy's log, with the rate the server answered while the queue stood, and while
-- overloaded: the two say whether the mode cost throughput); each line ends with "(mode FROM -> TO at
-- SECONDS s)", the Unix time, which llmrec.loadtest.modes reads into the load reports.

local function setting(name)
    local value = tonumber(os.getenv("LLMREC_ADMISSION_" .. name))
    if value == nil then
        error("llmrec admission: LLMREC_ADMISSION_" .. name .. " is not set to a number")
    end
    return value
end

local MAX_IN_FLIGHT = setting("MAX_IN_FLIGHT")
local MAX_QUEUE = setting("MAX_QUEUE")
local OVERLOAD_AFTER_MS = setting("OVERLOAD_AFTER_MS") -- 0: never switch
local OVERLOAD_IN_FLIGHT = math.min(setting("OVERLOAD_IN_FLIGHT"), MAX_IN_FLIGHT)
local OVERLOAD_QUEUE = math.min(setting("OVERLOAD_QUEUE"), MAX_QUEUE)
local STANDING = math.max(1, 3 * MAX_QUEUE // 4)
local WINDOW_MS = 250
local EXIT_SHARE = 0.25

local overloaded = false
local in_flight, queue = MAX_IN_FLIGHT, MAX_QUEUE
local standing_since = nil -- first arrival of the current run of arrivals that all found >= STANDING waiting
local answered, answered_then = 0, 0 -- calls the server answered (llmrec_answered), and at standing_since
local window_start, window_calls, window_free, window_refused = 0, 0, 0, 0
local overloaded_since, answered_since = 0, 0 -- when the mode began, and the answers then

local function now_ms()
    local t = core.now()
    return t.sec * 1000 + t.usec / 1000
end

local function set_mode(overload, now)
    overloaded = overload
    in_flight = overload and OVERLOAD_IN_FLIGHT or MAX_IN_FLIGHT
    queue = overload and OVERLOAD_QUEUE or MAX_QUEUE
    core.backends["triton"].servers["triton"]:set_maxconn(tostring(in_flight))
    standing_since = nil
    overloaded_since, answered_since = now, answered
    window_start, window_calls, window_free, window_refused = now, 0, 0, 0
end

core.register_action("llmrec_answered", { "http-res" }, function(txn)
    answered = answered + 1
end)

core.register_action("llmrec_admit", { "http-req" }, function(txn)
    local now = now_ms()
    local waiting = txn.f:queue("triton")
    local busy = txn.f:be_conn("triton") >= in_flight
    local refused = busy and waiting >= queue
    if refused then
        txn:set_var("txn.llmrec_refused", overloaded and "overloaded" or "full")
    end
    if overloaded then
        window_calls = window_calls + 1
        if not busy then
            window_free = window_free + 1
        end
        if refused then
            window_refused = window_refused + 1
        end
        if now - window_start >= WINDOW_MS then
            if window_free >= EXIT_SHARE * window_calls then
                core.Warning(string.format("llmrec admission: %d of %d calls in the last %.0f ms found a server "
                    .. "slot free (%d refused); after %.1f s overloaded (the server answered %.0f calls/s), "
                    .. "queueing again (mode overloaded -> queueing at %.3f s)", window_free, window_calls,
                    now - window_start, window_refused, (now - overloaded_since) / 1000,
                    (answered - answered_since) * 1000 / (now - overloaded_since), now / 1000))
                set_mode(false, now)
            else
                window_start, window_calls, window_free, window_refused = now, 0, 0, 0
            end
        end
    elseif waiting < STANDING then
        standing_since = nil
    elseif standing_since == nil then
        standing_since, answered_then = now, answered
    elseif OVERLOAD_AFTER_MS > 0 and now - standing_since >= OVERLOAD_AFTER_MS then
        core.Warning(string.format("llmrec admission: %d or more calls waited at every arrival for %.0f ms (the "
            .. "server answered %.0f calls/s); overloaded: %d at the server, %d waiting, the rest refused "
            .. "(mode queueing -> overloaded at %.3f s)", STANDING, now - standing_since,
            (answered - answered_then) * 1000 / (now - standing_since), OVERLOAD_IN_FLIGHT, OVERLOAD_QUEUE,
            now / 1000))
        set_mode(true, now)
    end
end)
