export * from "./CheckpointHandlers.ts"
export * from "./HttpServer.ts"
export * from "./ImageBuilderLayer.ts"
