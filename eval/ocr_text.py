"""What the OCR benchmark's pictures say: shop names, menus, prices, phone numbers, chat
messages, receipts and meme captions, composed from word lists by a seeded random generator.

The words are everyday simplified Chinese of the kind people search their photos for; each
composer returns plain lines (the scenes decide how they look).
"""

from __future__ import annotations

import random

OWNERS = ("老王", "张记", "小李", "阿婆", "金牌", "福满楼", "一品", "川味", "湘香", "粤来", "刘姐", "老北京", "胖哥", "陈师傅", "东北")
SHOPS = ("火锅店", "牛肉面馆", "烧烤", "奶茶铺", "便利超市", "大药房", "理发店", "水果店", "包子铺", "咖啡馆", "书店", "鲜花店",
         "饺子馆", "麻辣烫", "眼镜店", "干洗店", "五金店", "宠物医院")
DISHES = ("麻辣香锅", "酸菜鱼", "宫保鸡丁", "红烧牛肉面", "小笼包", "煎饼果子", "麻婆豆腐", "回锅肉", "鱼香肉丝", "糖醋排骨",
          "西红柿炒鸡蛋", "干炒牛河", "担担面", "炸酱面", "凉皮", "肉夹馍", "珍珠奶茶", "杨枝甘露", "蛋炒饭", "酸辣粉",
          "水煮牛肉", "红豆沙", "烤鸭", "羊肉串")
GOODS = ("矿泉水", "纯牛奶", "方便面", "薯片", "洗衣液", "卫生纸", "苹果", "香蕉", "鸡蛋", "面包", "酸奶", "可乐", "牙膏", "大米")
CITIES = (("北京市", "朝阳区", "建国路"), ("上海市", "浦东新区", "世纪大道"), ("广州市", "天河区", "天河路"),
          ("成都市", "锦江区", "春熙路"), ("杭州市", "西湖区", "文三路"), ("深圳市", "南山区", "科技园路"), ("西安市", "雁塔区", "长安南路"))
EVENTS = ("新店开业", "全场五折", "限时优惠", "欢迎光临", "买一送一", "周年庆典", "会员日特惠", "清仓大甩卖", "招聘启事",
          "草莓音乐节", "春季新品发布会", "读书分享会", "社区运动会", "免费试吃", "国庆大促", "年终盛典")
SLOGANS = ("品质生活从这里开始", "好吃不贵天天实惠", "新鲜直达放心选购", "用心做好每一碗面", "欢迎新老顾客光临",
           "扫码关注领取优惠券", "满一百减二十", "活动最终解释权归本店所有", "营业时间早九点到晚十点")
MESSAGES = ("今天晚上一起吃饭吗", "我已经到楼下了", "明天的会议改到下午三点", "收到谢谢", "记得带伞", "周末去爬山怎么样",
            "快递放在门口了", "生日快乐", "路上注意安全", "几点出发", "好的没问题", "文件我发你邮箱了", "晚点给你打电话",
            "妈妈做了红烧肉", "车票已经买好了", "下周二交报告", "孩子发烧了请假一天", "这家火锅店真不错", "帮我带一杯咖啡",
            "电影七点半开始", "密码是我生日", "到家了报个平安")
CONTACTS = ("妈妈", "老张", "小王", "项目组", "相亲相爱一家人", "李经理", "室友", "篮球群")
CAPTIONS = ("我太难了", "今天也是元气满满的一天", "打工人打工魂", "我裂开了", "真香", "摸鱼使我快乐", "好家伙",
            "社恐本恐", "躺平是不可能躺平的", "你品你细品", "周一综合症", "减肥从明天开始", "我就看看不说话", "别问问就是穷")
STAFF = ("张敏", "李娜", "王强", "刘洋", "陈静", "杨帆")


def shop_name(rng: random.Random) -> str:
    return rng.choice(OWNERS) + rng.choice(SHOPS)


def phone(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return f"电话 0{rng.choice((10, 21, 20, 28, 571, 755))}-{rng.randint(2000, 8999)} {rng.randint(1000, 9999)}"
    return f"手机 1{rng.choice((38, 39, 58, 86, 77))} {rng.randint(1000, 9999)} {rng.randint(1000, 9999)}"


def address(rng: random.Random) -> str:
    city, district, road = rng.choice(CITIES)
    return f"{city}{district}{road}{rng.randint(1, 399)}号"


def price(rng: random.Random) -> str:
    return f"{rng.randint(3, 98)}.{rng.choice((0, 5, 8))}元"


def date(rng: random.Random) -> str:
    return f"{rng.randint(2019, 2025)}年{rng.randint(1, 12)}月{rng.randint(1, 28)}日"


def poster(rng: random.Random) -> list[str]:
    """A title, a slogan, when and where."""
    return [rng.choice(EVENTS), rng.choice(SLOGANS), f"时间 {date(rng)}", address(rng)]


def sign(rng: random.Random) -> list[str]:
    """A shop's name and its phone number (and now and then what it sells)."""
    lines = [shop_name(rng), phone(rng)]
    return lines + [rng.choice(DISHES) + " " + price(rng)] if rng.random() < 0.4 else lines


def chat(rng: random.Random) -> tuple[str, list[tuple[bool, str]]]:
    """Who the chat is with, and its messages (mine or theirs)."""
    return rng.choice(CONTACTS), [(rng.random() < 0.5, message) for message in rng.sample(MESSAGES, rng.randint(3, 6))]


def receipt(rng: random.Random) -> list[str]:
    """A shop's till receipt: its name, what was bought at what price, the total, date and cashier."""
    bought = rng.sample(DISHES + GOODS, rng.randint(3, 6))
    amounts = [rng.randint(3, 98) for _ in bought]
    return ([shop_name(rng), f"日期 {date(rng)}"] + [f"{thing} {amount}.00" for thing, amount in zip(bought, amounts)]
            + [f"合计 {sum(amounts)}.00", f"收银员 {rng.choice(STAFF)}", "谢谢惠顾"])


def meme(rng: random.Random) -> list[str]:
    return [rng.choice(CAPTIONS)]
