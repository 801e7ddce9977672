-- wrk: POST a command. No response() callback: it makes wrk parse every
-- answer in Lua, which cost wrk more CPU than chronolog on this machine and
-- would skew the comparison with the GET /health run, which has none. That
-- every answer was a 202 is checked on chronolog's own request counters.
wrk.method = "POST"
wrk.path = "/api/v1/timestamp/2009-09-28T19:03:12Z"
