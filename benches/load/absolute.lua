-- wrk request builder: absolute-form targets (what HTTP_PROXY clients send), set via env;
-- WRK_TASK names the task on every request (x-toolgate-task), as an agent framework does.
local path = os.getenv("WRK_PATH") or "/"
local method = os.getenv("WRK_METHOD") or "GET"
local host = os.getenv("WRK_HOST")
local task = os.getenv("WRK_TASK")
local headers = {}
if host then headers["Host"] = host end
if task then headers["x-toolgate-task"] = task end
request = function()
  return wrk.format(method, path, headers)
end
