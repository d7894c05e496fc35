-- wrk script for scripts/bench-api.sh: every request uploads the same image as a frame,
-- spread over 12 sources (so over the topic's partitions), with the bench's bearer token.
-- Arguments (after --): IMAGE_PATH TOKEN
local image, token

function init(args)
  local file = assert(io.open(args[1], "rb"), "cannot open the image " .. tostring(args[1]))
  image = file:read("*a")
  file:close()
  token = args[2]
end

local n = 0

function request()
  n = n + 1
  local headers = { ["Content-Type"] = "image/jpeg", ["Authorization"] = "Bearer " .. token }
  return wrk.format("POST", "/v1/frames?source=bench-" .. (n % 12), headers, image)
end
