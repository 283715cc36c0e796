// The pod sandbox ("pause") image's program for the local node: no registry
// is reachable here, so the node builds its own. No dependencies.
module hookrelay.dev/tests/e2e/node/pause

go 1.26.0
