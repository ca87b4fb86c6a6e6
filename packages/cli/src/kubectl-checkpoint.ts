#!/usr/bin/env node
// The `kubectl-checkpoint` executable (a kubectl plugin): `kubectl checkpoint POD [-c CONTAINER] ...`.
import { NodeRuntime } from "@effect/platform-node"
import { Exit } from "effect"
import { runKubectlCheckpoint } from "./KubectlCheckpoint.ts"

runKubectlCheckpoint(process.argv.slice(2), process.env, { interactive: process.stderr.isTTY === true }).pipe(
  NodeRuntime.runMain({
    disablePrettyLogger: true,
    teardown: (exit, onExit) => onExit(Exit.isSuccess(exit) && typeof exit.value === "number" ? exit.value : 1)
  })
)
