-- Paces each wrk connection: wait this many milliseconds before every request, so that
-- connections / delay bounds the requests per second wrk offers (96 / 80 ms = 1200/s; with the
-- time the answers take, about 3x the example server's 200/s). Set WRK_DELAY_MS to change it.
-- Each request names one of 32 clients in `x-client-id`, as the tokio generator does, so the
-- server's per-client quotas and whole-client shedding have clients to tell apart.
local delay_ms = tonumber(os.getenv("WRK_DELAY_MS") or "80")
local clients = 32

function delay()
  return delay_ms
end

function request()
  wrk.headers["x-client-id"] = "client-" .. math.random(0, clients - 1)
  return wrk.format()
end
