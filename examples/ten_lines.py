import asyncio

from spark import Graph, Node, RemoteRpcProxyConfig, RemoteRpcProxyNode, RpcNode


class AnalysisRpcNode(RpcNode):  # served by: spark-worker examples.ten_lines:AnalysisRpcNode
    async def rpc_analyze(self, params, context):
        return {"words": len(params["text"].split()), "success": True}


class Prep(Node):
    async def process(self, context):
        return {"method": "analyze", "text": context.inputs.content["raw"].strip()}


async def main():
    prep = Prep()
    prep >> RemoteRpcProxyNode(config=RemoteRpcProxyConfig(transport="redis", service="analysis"))
    async with Graph(start=prep) as graph:
        result = await graph.run({"raw": " to be or not to be "})
    print(result.content)  # {'words': 6, 'success': True}


if __name__ == "__main__":
    asyncio.run(main())
