-- Argo CD health of a hookrelay Webhook (resource.customizations.health.hookrelay.dev_Webhook).
hs = { status = "Progressing", message = "waiting for the controller" }
if obj.status == nil or obj.status.observedGeneration ~= obj.metadata.generation then
  return hs
end
local conditions = {}
for _, c in ipairs(obj.status.conditions or {}) do
  conditions[c.type] = c
end
local stalled, ready, active = conditions["Stalled"], conditions["Ready"], conditions["Active"]
if stalled ~= nil and stalled.status == "True" then
  return { status = "Degraded", message = stalled.reason .. ": " .. stalled.message }
end
if active ~= nil and active.status == "False" then
  if active.reason == "Deactivated" then
    return { status = "Suspended", message = active.message }
  end
  -- Deactivated by the controller: its handler kept failing or is gone.
  return { status = "Degraded", message = active.reason .. ": " .. active.message }
end
if ready ~= nil and ready.status == "True" then
  return { status = "Healthy", message = ready.message }
end
if ready ~= nil then
  return { status = "Progressing", message = ready.reason .. ": " .. ready.message }
end
return hs
