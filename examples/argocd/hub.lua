-- Argo CD health of a hookrelay Hub (resource.customizations.health.hookrelay.dev_Hub).
hs = { status = "Progressing", message = "waiting for the controller" }
if obj.status == nil or obj.status.observedGeneration ~= obj.metadata.generation then
  return hs
end
for _, c in ipairs(obj.status.conditions or {}) do
  if c.type == "Stalled" and c.status == "True" then
    return { status = "Degraded", message = c.reason .. ": " .. c.message }
  end
end
for _, c in ipairs(obj.status.conditions or {}) do
  if c.type == "Ready" then
    if c.status == "True" then
      return { status = "Healthy", message = c.message }
    end
    return { status = "Progressing", message = c.reason .. ": " .. c.message }
  end
end
return hs
