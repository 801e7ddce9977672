-- wrk: POST a command with a unique Idempotency-Key per request, or with none.
--
--   wrk ... -s loadtest/keyed.lua URL -- ROUND keyed     # bench-ROUND.THREAD-COUNTER
--   wrk ... -s loadtest/keyed.lua URL -- ROUND unkeyed   # the same request, no key
--
-- Both modes go through request(), so that wrk does the same work per request
-- in the baseline and in the measurement (a request() callback costs wrk more
-- than the static request of post.lua). A key is one string concatenation; no
-- response() callback, as in post.lua: that every answer was a 202 is checked
-- on chronolog's own request counters. ROUND keeps the keys of one run apart
-- from the previous runs' (the counters start over with each wrk).
wrk.method = "POST"
wrk.path = "/api/v1/timestamp/2009-09-28T19:03:12Z"

local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("thread_number", threads)
end

local head, tail, fixed, counter
function init(args)
  local round, mode = args[1] or "0", args[2] or "keyed"
  if mode == "unkeyed" then
    fixed = wrk.format()
    return
  end
  head = wrk.method .. " " .. wrk.path .. " HTTP/1.1\r\nHost: " .. wrk.host
    .. "\r\nIdempotency-Key: bench-" .. round .. "." .. thread_number .. "-"
  tail = "\r\n\r\n"
  counter = 0
end

function request()
  if fixed then return fixed end
  counter = counter + 1
  return head .. counter .. tail
end
