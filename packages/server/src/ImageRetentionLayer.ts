import { ImageRetention } from "@checkpointer/core"
import { RegistryImageRemover } from "@checkpointer/strategies"

/** IMAGE_RETENTION and MAX_CHECKPOINTS_PER_CONTAINER: images are deleted through the registry API if they say so. */
export const ImageRetentionLayer = ImageRetention.layer(RegistryImageRemover.layer)
