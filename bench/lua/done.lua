-- Appended by bench/wrk.py after the scenario's script: one machine-readable line with the
-- summary, the error counts and the latency percentiles (wrk keeps them in microseconds).
local fp_percentiles = {50, 75, 90, 95, 99, 99.5, 99.9, 99.99}

done = function(summary, latency, requests)
  local e = summary.errors
  local parts = {}
  for _, p in ipairs(fp_percentiles) do
    parts[#parts + 1] = string.format('"%g":%d', p, latency:percentile(p))
  end
  parts[#parts + 1] = string.format('"100":%d', latency.max)  -- percentile(100) reads 0
  io.write(string.format(
    'FPBENCH {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,' ..
    '"write":%d,"status":%d,"timeout":%d,"mean_us":%.1f,"stdev_us":%.1f,"percentiles_us":{%s}}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency.mean, latency.stdev, table.concat(parts, ",")))
end
