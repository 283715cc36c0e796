-- Argo CD health of a hookrelay Delivery (resource.customizations.health.hookrelay.dev_Delivery).
local phase = "Pending"
if obj.status ~= nil and obj.status.phase ~= nil then
  phase = obj.status.phase
end
local message = phase
if obj.status ~= nil and obj.status.message ~= nil then
  message = obj.status.message
end
if phase == "Succeeded" then
  return { status = "Healthy", message = "delivered" }
end
if phase == "Failed" or phase == "Cancelled" then
  return { status = "Degraded", message = message }
end
return { status = "Progressing", message = message }
