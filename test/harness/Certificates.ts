import { Command, CommandExecutor, FileSystem, Path } from "@effect/platform"
import { Effect } from "effect"

export interface IssuedCertificate {
  readonly cert: string
  readonly key: string
}

export interface Pki {
  readonly dir: string
  /** PEM file of the certificate authority that signs everything this PKI issues. */
  readonly caFile: string
  readonly issue: (
    name: string,
    options: { readonly ips?: ReadonlyArray<string>; readonly dns?: ReadonlyArray<string>; readonly client?: boolean }
  ) => Effect.Effect<IssuedCertificate, Error>
}

const openssl = (cwd: string, ...args: ReadonlyArray<string>) =>
  Command.make("openssl", ...args).pipe(
    Command.workingDirectory(cwd),
    Command.string,
    Effect.mapError((cause) => new Error(`openssl ${args[0]} failed`, { cause }))
  )

/** A throwaway certificate authority in `dir` (made with the openssl CLI) issuing server and client certificates. */
export const makePki = (dir: string) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const path = yield* Path.Path
    const executor = yield* CommandExecutor.CommandExecutor
    yield* fs.makeDirectory(dir, { recursive: true })
    const caFile = path.join(dir, "ca.crt")
    if (!(yield* fs.exists(caFile))) {
      yield* openssl(
        dir,
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=checkpointer-test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt"
      )
    }
    const issue: Pki["issue"] = (name, options) =>
      Effect.gen(function*() {
        const sans = [...(options.ips ?? []).map((ip) => `IP:${ip}`), ...(options.dns ?? []).map((d) => `DNS:${d}`)]
        const usage = options.client ? "clientAuth" : "serverAuth"
        const ext = [`extendedKeyUsage=${usage}`, ...(sans.length > 0 ? [`subjectAltName=${sans.join(",")}`] : [])]
        yield* fs.writeFileString(path.join(dir, `${name}.ext`), ext.join("\n") + "\n")
        yield* openssl(
          dir,
          "req",
          "-newkey",
          "ec",
          "-pkeyopt",
          "ec_paramgen_curve:prime256v1",
          "-nodes",
          "-subj",
          `/CN=${name}`,
          "-keyout",
          `${name}.key`,
          "-out",
          `${name}.csr`
        )
        yield* openssl(
          dir,
          "x509",
          "-req",
          "-in",
          `${name}.csr`,
          "-CA",
          "ca.crt",
          "-CAkey",
          "ca.key",
          "-CAcreateserial",
          "-days",
          "2",
          "-extfile",
          `${name}.ext`,
          "-out",
          `${name}.crt`
        )
        return { cert: path.join(dir, `${name}.crt`), key: path.join(dir, `${name}.key`) }
      }).pipe(Effect.provideService(CommandExecutor.CommandExecutor, executor))
    return { dir, caFile, issue } satisfies Pki
  })
