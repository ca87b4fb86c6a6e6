export * as CheckpointArchive from "./CheckpointArchive.ts"
export * as NativeImageBuilder from "./NativeImageBuilder.ts"
export * as OciRegistry from "./OciRegistry.ts"
export * as RegistryAuth from "./RegistryAuth.ts"
