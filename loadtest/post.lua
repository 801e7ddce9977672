-- wrk: POST a command; counts the answers that are not 202.
wrk.method = "POST"
wrk.path = "/api/v1/timestamp/2009-09-28T19:03:12Z"

local not_accepted = 0
function response(status, headers, body)
  if status ~= 202 then not_accepted = not_accepted + 1 end
end

-- Each thread has its own counter; report them through the thread table.
local threads = {}
function setup(thread) table.insert(threads, thread) end
function done(summary, latency, requests)
  local total = 0
  for _, t in ipairs(threads) do total = total + (t:get("not_accepted") or 0) end
  io.write(string.format("not_202 %d\n", total))
end
