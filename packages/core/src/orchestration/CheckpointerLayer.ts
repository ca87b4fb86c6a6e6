import { ConfigError, ConfigProvider, Layer } from "effect"
import { checkpointerConfig, invalidConfiguration } from "../config/Config.ts"
import type { InvalidConfiguration } from "../config/Config.ts"
import { Cluster } from "../kubernetes/Cluster.ts"
import { CheckpointDirectory } from "../node/CheckpointDirectory.ts"
import { KubeletService } from "../node/KubeletService.ts"
import { Checkpointer } from "./Checkpointer.ts"
import type { ImageBuilder } from "./ImageBuilder.ts"
import { ImageRetention } from "./ImageRetention.ts"
import { PodEvents } from "./PodEvents.ts"
import { Readiness } from "./Readiness.ts"
import { ResultStore } from "./ResultStore.ts"

/** Settings by their environment variable names (`{ CHECKPOINTER_NODE: "worker-1", ... }`), or any ConfigProvider. */
export type CheckpointerSettings = ConfigProvider.ConfigProvider | Readonly<Record<string, string>>

export interface CheckpointerLayerOptions<E, R, E2 = never, R2 = never> {
  /**
   * The image-build strategy: a builder's layer from @checkpointer/strategies (`NativeImageBuilder.layer`, ...), or
   * its `ImageBuilderLayer`, the builder CHECKPOINT_BUILDER selects.
   */
  readonly imageBuilder: Layer.Layer<ImageBuilder, E, R>
  /**
   * What happens to pushed images: `ImageRetention.Keep` (default), or `ImageRetention.layer(remover)` for
   * IMAGE_RETENTION and MAX_CHECKPOINTS_PER_CONTAINER (the server's, with strategies' RegistryImageRemover).
   */
  readonly imageRetention?: Layer.Layer<ImageRetention, E2, R2 | ResultStore>
  /** Where results are kept: `ResultStore.Memory` (default) or `ResultStore.File` (STORAGE_BASE_PATH, the server). */
  readonly resultStore?: typeof ResultStore.Memory | typeof ResultStore.File
  /** The settings; the process environment when absent. */
  readonly config?: CheckpointerSettings
}

/** A ConfigProvider for settings given as an object of environment variable names. */
export const configProviderOf = (settings: CheckpointerSettings): ConfigProvider.ConfigProvider =>
  ConfigProvider.ConfigProviderTypeId in settings
    ? settings as ConfigProvider.ConfigProvider
    : ConfigProvider.fromMap(new Map(Object.entries(settings)))

/** A layer's ConfigError turned into InvalidConfiguration; its other errors unchanged. */
export const describingConfigErrors = <E>(error: E): Exclude<E, ConfigError.ConfigError> | InvalidConfiguration =>
  ConfigError.isConfigError(error) ? invalidConfiguration(error) : error as Exclude<E, ConfigError.ConfigError>

/** Every setting read once, so that all problems are reported together (the server's startup check). */
export const ConfigurationChecked: Layer.Layer<never, InvalidConfiguration> = Layer.effectDiscard(checkpointerConfig)
  .pipe(Layer.mapError(invalidConfiguration))

/**
 * A Checkpointer in this process, without an HTTP server: the kubelet of CHECKPOINTER_NODE_IP, the Kubernetes API
 * (in-cluster or KUBECONFIG), the given builder and result store. The server is composed with it too. A wrong or
 * missing setting fails with InvalidConfiguration, listing every problem as the server does at startup.
 */
export const checkpointerLayer = <E, R, E2 = never, R2 = never>(options: CheckpointerLayerOptions<E, R, E2, R2>) => {
  const layer = Layer.mergeAll(Checkpointer.Default, Readiness.Default).pipe(
    Layer.provide([
      KubeletService.Default,
      CheckpointDirectory.Default,
      options.imageBuilder,
      options.imageRetention ?? ImageRetention.Keep
    ]),
    Layer.provideMerge(PodEvents.Default),
    Layer.provideMerge(options.resultStore ?? ResultStore.Memory),
    Layer.provideMerge(Cluster.Default),
    Layer.mapError(describingConfigErrors),
    Layer.provide(ConfigurationChecked)
  )
  return options.config === undefined
    ? layer
    : Layer.provide(layer, Layer.setConfigProvider(configProviderOf(options.config)))
}
