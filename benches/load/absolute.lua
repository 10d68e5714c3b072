-- wrk request builder: absolute-form targets (what HTTP_PROXY clients send), set via env.
local path = os.getenv("WRK_PATH") or "/"
local method = os.getenv("WRK_METHOD") or "GET"
local host = os.getenv("WRK_HOST")
request = function()
  if host then
    return wrk.format(method, path, { ["Host"] = host })
  end
  return wrk.format(method, path)
end
