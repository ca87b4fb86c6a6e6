import { reasonOf } from "@checkpointer/core"
import { FileSystem } from "@effect/platform"
import { Config, ConfigError, Effect, Option } from "effect"

/** REGISTRY_CA_FILE (an extra CA, PEM) and REGISTRY_INSECURE (plain HTTP or unverified TLS allowed). */
export const registryTrustConfig = Config.all({
  caFile: Config.option(Config.string("REGISTRY_CA_FILE")),
  insecure: Config.withDefault(Config.boolean("REGISTRY_INSECURE"), false)
})

/** The PEM text of REGISTRY_CA_FILE, read at startup: an unreadable file is a startup error naming the variable. */
export const readRegistryCa = (caFile: Option.Option<string>) =>
  Option.match(caFile, {
    onNone: () => Effect.succeed(Option.none<string>()),
    onSome: (path) =>
      Effect.flatMap(FileSystem.FileSystem, (fs) => fs.readFileString(path)).pipe(
        Effect.map(Option.some),
        Effect.mapError((error) =>
          ConfigError.InvalidData(["REGISTRY_CA_FILE"], `cannot read ${path} (${reasonOf(error)})`)
        )
      )
  })
