-- Paces each wrk connection: wait this many milliseconds before every request, so that
-- connections / delay bounds the requests per second wrk offers (96 / 80 ms = 1200/s; with the
-- time the answers take, about 3x the example server's 200/s). Set WRK_DELAY_MS to change it.
local delay_ms = tonumber(os.getenv("WRK_DELAY_MS") or "80")

function delay()
  return delay_ms
end
