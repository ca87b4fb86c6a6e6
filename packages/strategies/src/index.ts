// archive: reading a checkpoint archive once (format, checkpointctl metadata, the image annotations it gives)
export * as ArchiveFormat from "./archive/ArchiveFormat.ts"
export * as ArchiveInspector from "./archive/ArchiveInspector.ts"
export * as ArchiveReader from "./archive/ArchiveReader.ts"
export * as CheckpointMetadata from "./archive/CheckpointMetadata.ts"
export * as ImageAnnotations from "./archive/ImageAnnotations.ts"
// registry: the OCI distribution push, reading checkpoint images back, deletes, and their authentication
export * as DockerConfig from "./registry/DockerConfig.ts"
export * as OciRegistry from "./registry/OciRegistry.ts"
export * as RegistryAuth from "./registry/RegistryAuth.ts"
export * as RegistryError from "./registry/RegistryError.ts"
export * as RegistryHttp from "./registry/RegistryHttp.ts"
export * as RegistryImageRemover from "./registry/RegistryImageRemover.ts"
export * as RegistryImages from "./registry/RegistryImages.ts"
export * as RegistryTrust from "./registry/RegistryTrust.ts"
export * as WwwAuthenticate from "./registry/WwwAuthenticate.ts"
// native: the archive pushed as the image's layer (compressed, encrypted if configured), no pod
export * from "./native/ArchivePusher.ts"
export * as NativeImageBuilder from "./native/NativeImageBuilder.ts"
// kaniko: the Kaniko executor in a pod, the build context over attach (kaniko) or a hostPath (kaniko-fs)
export * as KanikoBuilder from "./kaniko/KanikoBuilder.ts"
export * as KanikoContext from "./kaniko/KanikoContext.ts"
export * as KanikoFsImageBuilder from "./kaniko/KanikoFsImageBuilder.ts"
export * as KanikoImageBuilder from "./kaniko/KanikoImageBuilder.ts"
export { KanikoPods } from "./kaniko/KanikoPods.ts"
// the strategy CHECKPOINT_BUILDER selects
export * from "./ImageBuilderLayer.ts"
// checkpointer-push: the native builder on the command line
export { runCheckpointerPush } from "./cli/CheckpointerPush.ts"
