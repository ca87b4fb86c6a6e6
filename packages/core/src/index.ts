// domain: names, results, errors, the pod record of a checkpoint image
export * from "./domain/Domain.ts"
export * from "./domain/Errors.ts"
export * from "./domain/PodRecord.ts"
export * from "./domain/Reason.ts"
// contract: the HTTP API (HttpApi), shared by the server and the typed client
export * from "./contract/Api.ts"
// config: each service's environment variables
export * from "./config/Config.ts"
// kubernetes: the API server (pods, reviews)
export * from "./kubernetes/Cluster.ts"
export * from "./kubernetes/KubernetesApi.ts"
// node: the kubelet's checkpoint API and the directory its archives land in
export * from "./node/CheckpointDirectory.ts"
export * from "./node/KubeletService.ts"
// orchestration: checkpoints, restores, their results, routing between nodes, readiness, metrics; builders plug in here
export * from "./orchestration/Checkpointer.ts"
export * from "./orchestration/CheckpointerLayer.ts"
export * from "./orchestration/CheckpointImages.ts"
export * from "./orchestration/ImageBuilder.ts"
export * from "./orchestration/ImageRetention.ts"
export * as Metrics from "./orchestration/Metrics.ts"
export * from "./orchestration/NodeRouter.ts"
export * from "./orchestration/PodEvents.ts"
export * from "./orchestration/Readiness.ts"
export * from "./orchestration/Restorer.ts"
export * from "./orchestration/ResultStore.ts"
export * as Tracing from "./orchestration/Tracing.ts"
