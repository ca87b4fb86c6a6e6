import { Effect } from "effect"
import type { Node } from "./Resources.ts"
import { asListItem } from "./Resources.ts"
import type { Route } from "./Router.ts"
import { reply } from "./Router.ts"
import { notFound } from "./Status.ts"
import type { Store } from "./Store.ts"
import { changed, nextMeta } from "./Store.ts"

export interface NodeInput {
  readonly name: string
  readonly address: string
  readonly labels?: Readonly<Record<string, string>>
}

const nodeArchitecture = ({ x64: "amd64", arm64: "arm64" } as Record<string, string>)[process.arch] ?? process.arch

/** The scheduler's part: the first node (by name) whose labels match the pod's nodeSelector; none fits: unscheduled. */
export const schedule = (nodes: ReadonlyMap<string, Node>, nodeSelector: Readonly<Record<string, string>>) =>
  [...nodes.values()].map((node) => node.metadata).sort((a, b) => a.name.localeCompare(b.name)).find((node) =>
    Object.entries(nodeSelector).every(([key, value]) => node.labels?.[key] === value)
  )?.name

/** The cluster's nodes: added by the harness, listed and read through the API. */
export const makeNodes = (store: Store) => {
  const add = (node: NodeInput) =>
    store.change((current, at) => {
      const [resourceVersion, metadata] = nextMeta(current, {
        name: node.name,
        labels: {
          "kubernetes.io/hostname": node.name,
          "kubernetes.io/os": "linux",
          "kubernetes.io/arch": nodeArchitecture,
          ...node.labels
        }
      }, at)
      const created: Node = {
        apiVersion: "v1",
        kind: "Node",
        metadata,
        status: {
          addresses: [{ type: "InternalIP", address: node.address }, { type: "Hostname", address: node.name }],
          conditions: [{ type: "Ready", status: "True" }]
        }
      }
      const nodes = new Map(current.nodes).set(node.name, created)
      return changed(created, [], { ...current, resourceVersion, nodes })
    })

  const routes: ReadonlyArray<Route> = [
    {
      path: "api/v1/nodes",
      methods: {
        GET: () =>
          Effect.map(store.state, (current) =>
            reply(200)({
              kind: "NodeList",
              apiVersion: "v1",
              metadata: { resourceVersion: String(current.resourceVersion) },
              items: [...current.nodes.values()].map(asListItem)
            }))
      }
    },
    {
      path: "api/v1/nodes/*",
      methods: {
        GET: ({ params: [name] }) =>
          Effect.flatMap(store.state, (current) => {
            const node = current.nodes.get(name!)
            return node === undefined ? Effect.fail(notFound("nodes", name!)) : Effect.succeed(reply(200)(node))
          })
      }
    }
  ]

  return { add, routes } as const
}
