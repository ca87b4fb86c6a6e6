export * from "./handlers/CheckpointHandlers.ts"
export * from "./http/HttpServer.ts"
