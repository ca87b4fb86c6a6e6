#!/usr/bin/env node
// The `checkpointer-push` executable: `checkpointer-push ARCHIVE IMAGE [...]`.
import { NodeRuntime } from "@effect/platform-node"
import { Exit } from "effect"
import { runCheckpointerPush } from "./CheckpointerPush.ts"

runCheckpointerPush(process.argv.slice(2), process.env, { interactive: process.stderr.isTTY === true }).pipe(
  NodeRuntime.runMain({
    disablePrettyLogger: true,
    teardown: (exit, onExit) => onExit(Exit.isSuccess(exit) && typeof exit.value === "number" ? exit.value : 1)
  })
)
